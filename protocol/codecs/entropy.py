"""The lossless entropy stage: zstd over the whole msgpack list of tensor entries.

Wire: the update's tensor list holds exactly one map, ``{"zstd": <bytes: one zstd
frame>, "size": <int: bytes of the msgpack list inside>}``. The frame must
declare its content size, equal to ``size``, and ``size`` must be within the
bound the receiver computes from the model's shapes (what the inner pipeline
could legitimately produce), so a decompression bomb is refused before a byte
is inflated. The zstd binding is Python's own ``compression.zstd`` (3.14 and
newer) or its backport, ``backports.zstd`` (the ``agent`` extra; 1.8 MB installed
against the 24 MB of the ``zstandard`` package it replaced, same frames), imported on
first use: a device without either can still run every other codec.

Invariants: unwrap never inflates more than ``max_size`` bytes; any failure is a
WireError; the inner list is returned as parsed, for the inner pipeline to check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import msgpack

from protocol.errors import RejectReason, WireError


def zstd_backend() -> ModuleType:
    """``compression.zstd`` (PEP 784), else ``backports.zstd``: one API either way.

    Raises:
        ValueError: if neither is installed.
    """
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[no-redef,unused-ignore]
        except ImportError:
            raise ValueError(
                "the zstd codec stage needs Python 3.14 or the 'backports.zstd' package"
            ) from None
    module: ModuleType = zstd
    return module


def check_available() -> None:
    """Raises ValueError if this build cannot run the zstd stage."""
    zstd_backend()


def wrap(entries: Sequence[Mapping[str, Any]], level: int) -> dict[str, Any]:
    """Pack ``entries`` with msgpack and compress them into the one wrapper entry."""
    inner: bytes = msgpack.packb(list(entries), use_bin_type=True)
    # one-shot compression writes the frame's content size, which unwrap requires
    return {"zstd": zstd_backend().compress(inner, level=level), "size": len(inner)}


def unwrap(entries: Sequence[Mapping[str, Any]], max_size: int) -> list[Mapping[str, Any]]:
    """Inflate the wrapper entry back into the inner entry list.

    Raises:
        WireError: BAD_CODEC if the list is not one wrapper entry; TOO_LARGE if
            ``size`` exceeds ``max_size``; MALFORMED for a frame that does not
            declare, or does not inflate to, exactly ``size`` bytes of a msgpack list.
    """
    if len(entries) != 1 or "zstd" not in entries[0]:
        raise WireError(RejectReason.BAD_CODEC, "zstd: want one {'zstd', 'size'} entry")
    blob, size = entries[0].get("zstd"), entries[0].get("size")
    if not isinstance(blob, bytes) or not isinstance(size, int) or isinstance(size, bool):
        raise WireError(RejectReason.MALFORMED, "zstd: 'zstd' must be bytes and 'size' an int")
    if not 0 <= size <= max_size:
        raise WireError(RejectReason.TOO_LARGE, f"zstd: size {size} outside [0, {max_size}]")
    try:
        zstd = zstd_backend()
    except ValueError as exc:
        raise WireError(RejectReason.BAD_CODEC, str(exc)) from None
    try:
        frame = zstd.get_frame_info(blob)
        # neither is written; both sides refuse them (the checksum flag: bit 2 of the
        # frame header descriptor, the byte after the 4-byte magic number)
        if frame.dictionary_id or (len(blob) > 4 and blob[4] & 0x04):
            raise WireError(RejectReason.MALFORMED, "zstd: frames with a checksum or dictionary")
        declared = frame.decompressed_size
        if declared != size:  # None: unknown size, which we refuse
            raise WireError(RejectReason.MALFORMED, f"zstd: frame declares {declared} != {size}")
        inflater = zstd.ZstdDecompressor()
        inner = inflater.decompress(blob, max_length=size)
        if not inflater.eof or inflater.unused_data:  # a longer, cut or trailing frame
            raise WireError(RejectReason.MALFORMED, "zstd: not exactly one whole frame")
    except zstd.ZstdError as exc:
        raise WireError(RejectReason.MALFORMED, f"zstd: {exc}") from None
    if len(inner) != size:
        raise WireError(RejectReason.MALFORMED, f"zstd: inflated {len(inner)} != {size} bytes")
    try:
        obj = msgpack.unpackb(inner, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(RejectReason.MALFORMED, f"zstd: inner list not msgpack ({exc})") from None
    if not isinstance(obj, list) or not all(isinstance(e, Mapping) for e in obj):
        raise WireError(RejectReason.MALFORMED, "zstd: inner payload must be a list of maps")
    return obj
