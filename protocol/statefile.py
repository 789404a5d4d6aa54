"""A device's state files: one versioned msgpack document of named tensors each, never pickle.

Every file is ``{"v": version, "type": kind, ...fields, "tensors": [...]}`` with the
tensors encoded exactly as on the wire (:func:`protocol.tensors.encode_weights`), so
any msgpack reader can load it and a corrupt file is refused, not executed. Writes
go through :func:`protocol.durable.atomic_write`: a power cut leaves the old file
or the new one. The residual, the saved global model and the device model are such
files; each module says what its fields mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack

from protocol import Weights, WireError, decode_weights, encode_weights
from protocol.durable import atomic_write


def save_doc(path: Path, kind: str, version: int, tensors: Weights,
             fields: Mapping[str, Any] | None = None) -> None:
    """Atomically and durably replace ``path`` with a ``kind`` document."""
    doc = {"v": version, "type": kind, **(fields or {}), "tensors": encode_weights(tensors)}
    atomic_write(path, msgpack.packb(doc, use_bin_type=True))


def load_doc(path: Path, kind: str, version: int) -> tuple[dict[str, Any], Weights] | None:
    """The document's fields and its tensors (writable copies); ``None`` if there is no file.

    Raises:
        ValueError: naming the file, for bytes that are not a ``kind`` document of
            ``version`` or whose tensors do not decode.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise ValueError(f"{path}: unreadable {kind} ({exc})") from None
    if not isinstance(doc, dict) or doc.get("type") != kind or doc.get("v") != version:
        raise ValueError(f"{path}: not a version-{version} fedmq {kind}")
    try:
        tensors = decode_weights(doc.get("tensors"))
    except WireError as exc:
        raise ValueError(f"{path}: corrupt {kind} ({exc.detail})") from None
    return doc, {name: arr.copy() for name, arr in tensors.items()}
