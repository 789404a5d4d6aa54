"""An exact sum as it travels: base-``2**40`` integer digits, one canonical form per sum.

Why: a site aggregator or an ingest worker hands its partial sum to the
coordinator, which must merge it without rounding, so the sum travels as its
exact digits rather than as a float. Coordinate ``i`` of the sum is
``sum(digits[k, i] * 2**(DIGIT_BITS * (low + k)) for k in range(len(digits)))``.

The form is canonical, so equal sums have equal bytes (and equal digests):
digits below the top row are in ``[0, 2**40)``, the top row's in
``[-2**40, 2**40)`` (its sign is the sum's); the bottom row is not all zero (a
sum that is a multiple of the next unit drops it); the top row is not all zero
and, with a row below it, not all in ``{0, -1}`` (the row below could hold it).
The zero sum has no rows. docs/PROTOCOL.md, "Partial aggregates".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from protocol.errors import RejectReason, WireError

#: bits per digit: the exact sum's bin width, part of the wire format
DIGIT_BITS = 40
#: the lowest and highest digit positions a sum of float32 terms can use (2**-240 .. 2**240)
LOWEST_DIGIT = -6
HIGHEST_DIGIT = 5
_BASE = 1 << DIGIT_BITS

Digits = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True, eq=False)
class SumState:
    """The canonical digits of an exact sum over ``size`` coordinates; ``digits`` is
    ``(rows, size)`` int64, row ``k`` at position ``low + k``."""

    low: int
    digits: Digits

    @property
    def size(self) -> int:
        return int(self.digits.shape[1])

    def same(self, other: SumState) -> bool:
        """True if both hold the same sum (the canonical form makes that equality of digits)."""
        return (self.low, self.digits.shape) == (other.low, other.digits.shape) and bool(
            np.array_equal(self.digits, other.digits)
        )

    def to_bytes(self) -> bytes:
        """The digits, row after row, as little-endian int64."""
        return self.digits.astype("<i8", copy=False).tobytes()


def zero_state(size: int) -> SumState:
    """The sum of nothing over ``size`` coordinates."""
    return SumState(0, np.zeros((0, size), np.int64))


def decode_state(low: int, rows: int, size: int, raw: bytes) -> SumState:
    """A sum state from its wire fields, checked to be canonical.

    Raises:
        WireError: BAD_STATE naming what is wrong.
    """
    if not (0 <= rows <= HIGHEST_DIGIT - LOWEST_DIGIT + 1 and size >= 0):
        raise WireError(RejectReason.BAD_STATE, f"{rows} digit rows of {size}")
    if rows and not LOWEST_DIGIT <= low <= HIGHEST_DIGIT - rows + 1:
        raise WireError(RejectReason.BAD_STATE, f"digits {low}..{low + rows - 1} out of range")
    if len(raw) != 8 * rows * size:
        raise WireError(RejectReason.BAD_STATE, f"{len(raw)} bytes for {rows} x {size} digits")
    digits = np.frombuffer(raw, "<i8").reshape(rows, size).astype(np.int64, copy=False)
    state = SumState(low if rows else 0, digits)
    check_canonical(state)
    return state


def check_canonical(state: SumState) -> None:
    """Refuse digits out of range, or a form that is not the sum's canonical one.

    Raises:
        WireError: BAD_STATE.
    """
    d = state.digits
    rows = d.shape[0]
    if rows == 0:
        return
    if d.size and (int(d[:-1].min(initial=0)) < 0 or int(d[:-1].max(initial=0)) >= _BASE):
        raise WireError(RejectReason.BAD_STATE, "a digit below the top outside [0, 2**40)")
    top = d[-1]
    if top.size and (int(top.min()) < -_BASE or int(top.max()) >= _BASE):
        raise WireError(RejectReason.BAD_STATE, "a top digit outside [-2**40, 2**40)")
    if not d[0].any():
        raise WireError(RejectReason.BAD_STATE, "the lowest digit row is zero: not canonical")
    if rows > 1 and int(top.max()) <= 0 and int(top.min()) >= -1:
        raise WireError(RejectReason.BAD_STATE, "the top digit row is redundant: not canonical")
