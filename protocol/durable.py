"""Files that survive power loss mid-write: write a temporary file, fsync, rename, fsync the dir.

A reader of ``path`` sees the old bytes or the new ones, never a mix: the new
bytes are on disk before the rename publishes them, and the directory entry is
on disk before :func:`atomic_write` returns. A cut mid-write leaves at most a
stray temporary file (``.NAME.*``), which readers never open; :func:`stray_temporaries`
finds them for clean-up. Standard library only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temporary_prefix(path: Path) -> str:
    """How :func:`atomic_write` names its temporary files for ``path``."""
    return f".{path.name}."


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (creating its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename is durable only once its directory is)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stray_temporaries(path: Path) -> list[Path]:
    """Temporary files an interrupted :func:`atomic_write` of ``path`` left behind."""
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(temporary_prefix(path) + "*"))
