"""Sorted, unique tensor indices as LEB128 varints of their gaps.

Index ``i_0 < i_1 < ...`` travels as ``g_0 = i_0`` and ``g_j = i_j - i_(j-1) - 1``,
each an unsigned LEB128 varint (7 bits a byte, high bit = more bytes follow),
all concatenated into one ``|u1`` array. Writing gap-minus-one makes "sorted and
unique" a property of the encoding itself: any decodable byte string names a
strictly increasing sequence, and only the count and the range need checking.
Top-k at 1% of a large tensor has mean gaps near 100, so most indices take one
byte or two instead of four.

Invariants: the decoder checks the byte count, each varint's length (<= 5 bytes,
no overlong zero tail), the number of varints and the largest index before it
builds the index array; any failure is a WireError, never an IndexError later.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.errors import RejectReason, WireError
from protocol.tensors import decode_array, encode_array

#: a uint32 needs at most 5 varint bytes (5 * 7 = 35 bits)
MAX_VARINT_BYTES = 5
#: indices fit a uint32; larger tensors cannot be sparsified (and sums cannot wrap uint64)
MAX_NUMEL = (1 << 32) - 1


def encode_indices(idx: npt.NDArray[np.int64]) -> dict[str, Any]:
    """Encode strictly increasing indices (< 2**32) as one ``|u1`` varint array."""
    gaps = np.diff(idx.astype(np.int64), prepend=-1) - 1  # (k,) int64, all >= 0
    if gaps.size and (gaps.min() < 0 or int(idx[-1]) >= MAX_NUMEL):
        raise ValueError(f"indices must be strictly increasing and < {MAX_NUMEL}")
    g = gaps.astype(np.uint64)
    shifts = np.arange(MAX_VARINT_BYTES, dtype=np.uint64) * np.uint64(7)  # (5,)
    groups = ((g[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)  # (k, 5)
    nbytes = 1 + (g[:, None] >= (np.uint64(1) << shifts[1:])).sum(axis=1)  # (k,) in 1..5
    column = np.arange(MAX_VARINT_BYTES)
    groups[column[None, :] < (nbytes - 1)[:, None]] |= 0x80  # continuation bits
    data = groups[column[None, :] < nbytes[:, None]]  # row-major: varints in order
    return encode_array(data)


def decode_indices(obj: Any, count: int, numel: int, what: str) -> npt.NDArray[np.int64]:
    """Rebuild ``count`` strictly increasing indices, all ``< numel``.

    Raises:
        WireError: MALFORMED for an undecodable array; BAD_CODEC for a varint
            stream that is truncated, overlong, of the wrong count, or out of range.
    """
    if obj is None:
        raise WireError(RejectReason.BAD_CODEC, f"{what}: no 'idx' under a top-k codec")
    data = decode_array(obj, f"{what}.idx", max_elements=MAX_VARINT_BYTES * count)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise WireError(RejectReason.BAD_CODEC, f"{what}.idx: want a 1-D |u1 array")
    if numel > MAX_NUMEL:
        raise WireError(RejectReason.BAD_CODEC, f"{what}: {numel} elements cannot be indexed")
    ends = np.flatnonzero(data < 0x80)  # (count,) the last byte of each varint
    if ends.size != count or (count and ends[-1] != data.size - 1):
        raise WireError(RejectReason.BAD_CODEC, f"{what}.idx: want {count} whole varints")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES or (data[ends[lengths > 1]] == 0).any():
        raise WireError(RejectReason.BAD_CODEC, f"{what}.idx: overlong varint")
    position = np.arange(data.size) - np.repeat(starts, lengths)  # byte's place in its varint
    parts = (data & 0x7F).astype(np.uint64) << (np.uint64(7) * position.astype(np.uint64))
    gaps = np.add.reduceat(parts, starts)  # (count,) uint64, each < 2**35
    if gaps.max() >= numel:
        raise WireError(RejectReason.BAD_CODEC, f"{what}.idx: index beyond {numel} elements")
    idx = np.cumsum(gaps + np.uint64(1)) - np.uint64(1)  # <= count * numel < 2**64: no wrap
    if idx[-1] >= numel:
        raise WireError(RejectReason.BAD_CODEC, f"{what}.idx: index beyond {numel} elements")
    return idx.astype(np.int64)
