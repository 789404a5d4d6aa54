"""The device model on disk: one msgpack file of named float32 tensors, never pickle.

The file is ``{"v": 1, "type": "device-model", "tensors": [...]}`` with the
tensors encoded exactly as on the wire (:func:`protocol.tensors.encode_weights`),
so any msgpack reader can load it and a corrupt file is refused, not executed.
Writes are atomic (a temporary file in the same directory, fsync, ``os.replace``):
a crash leaves the old model or the new one, never half of either. Callers pick
the path (an agent's state directory); this module knows nothing of agents.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgpack

from protocol import Weights, WireError
from protocol.tensors import decode_weights, encode_weights

_VERSION = 1
_TYPE = "device-model"


def save_device_model(path: Path, weights: Weights) -> None:
    """Atomically replace ``path`` with ``weights`` (creating its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"v": _VERSION, "type": _TYPE, "tensors": encode_weights(weights)}
    data: bytes = msgpack.packb(doc, use_bin_type=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_device_model(path: Path) -> Weights | None:
    """What :func:`save_device_model` wrote, as writable float32 arrays; ``None`` if no file.

    Raises:
        ValueError: for a file that is not a device model of this version, or corrupt.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise ValueError(f"{path}: unreadable device model ({exc})") from None
    if not isinstance(doc, dict) or doc.get("type") != _TYPE or doc.get("v") != _VERSION:
        raise ValueError(f"{path}: not a version-{_VERSION} fedmq device model")
    try:
        weights = decode_weights(doc.get("tensors"))
    except WireError as exc:
        raise ValueError(f"{path}: {exc.detail}") from None
    return {name: arr.copy() for name, arr in weights.items()}
