"""The device model on disk: one msgpack file of named float32 tensors, never pickle.

The file is an :mod:`protocol.statefile` document of type ``device-model``
holding only tensors. Callers pick the path (an agent's state directory); this
module knows nothing of agents.
"""

from __future__ import annotations

from pathlib import Path

from protocol import Weights
from protocol.statefile import load_doc, save_doc

_VERSION = 1
_TYPE = "device-model"


def save_device_model(path: Path, weights: Weights) -> None:
    """Atomically replace ``path`` with ``weights`` (creating its directory)."""
    save_doc(path, _TYPE, _VERSION, weights)


def load_device_model(path: Path) -> Weights | None:
    """What :func:`save_device_model` wrote, as writable float32 arrays; ``None`` if no file.

    Raises:
        ValueError: for a file that is not a device model of this version, or corrupt.
    """
    loaded = load_doc(path, _TYPE, _VERSION)
    return None if loaded is None else loaded[1]
