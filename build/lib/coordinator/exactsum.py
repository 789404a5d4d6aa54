"""An exact running sum of weighted float32 arrays: the total never depends on the order of adds.

References:
    Demmel and Nguyen, "Parallel Reproducible Summation", IEEE Trans. Computers 64(7),
    2015: binned accumulation with fixed bin boundaries, each term split into bins by
    the extraction ``q = (r + C) - C``.
    Neal, "Fast exact summation using small and large superaccumulators",
    arXiv:1505.05571, 2015: an exact sum is one value whatever the order of the terms.

Why: updates arrive in whatever order agents finish training, and a coordinator
killed mid-round and resumed sees them in yet another order. A float64 running sum
rounds differently for each order, so the float32 model could differ in its last
bit, and training amplifies that bit over the following rounds. Summing exactly
makes the aggregate a function of the *set* of updates: an interrupted run that
resumes ends with the same model, bit for bit, as one that never stopped.

How: bin ``j`` holds an exact multiple of ``2**(W * j)`` in a float64 lane per
coordinate. A term is cut, top bin first, into pieces that are multiples of each
bin's unit; every piece and every partial sum has at most 53 significant bits, so
each float64 addition is exact. The lowest bin any term reaches is bounded from the
smallest term before cutting starts, and what is left for that bin goes in whole, so
an add costs a few passes over the array per bin and no test for "anything left?".
Carries move upwards every ``NORMALIZE_EVERY`` adds and before reading the total,
which is taken from the unique base-``2**W`` digits of the exact sum, so the float64
it returns is the same for every order of the same terms.

Invariants: terms are float32 values times a weight in ``[1, 2**53]``, so each
is a finite multiple of ``2**-201`` below ``2**181``; memory is one float64 lane
per bin in use (typically three) plus two scratch lanes, O(model) whatever the
number of adds; nothing is allocated per add once the bins exist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

#: bits per bin: a piece is below 2**W units, so 2**(53 - W) pieces fit a lane exactly
BIN_BITS = 40
#: carries are pushed up this often; 2**13 pieces of < 2**40 units would fill 53 bits
NORMALIZE_EVERY = 2**12
#: the weight range that keeps every term a multiple of 2**-201 below 2**181
MAX_WEIGHT = float(2**53)
#: integer weights below this times a float32 (24 bits) are exact float64 products
_EXACT_WEIGHT = float(2**29)
#: the lowest bin a term in range can reach: 2**(40 * -6) = 2**-240 < 2**-201
_J_MIN = -6

Lane = npt.NDArray[np.float64]


def _unit(j: int) -> float:
    return math.ldexp(1.0, BIN_BITS * j)


class ExactSum:
    """``sum(weight_i * values_i)`` over flat float32 arrays, exactly; see the module doc."""

    def __init__(self, size: int, *, scratch: int | None = None) -> None:
        """``size`` coordinates; adds touch slices of at most ``scratch`` (default ``size``)."""
        self._size = size
        self._bins: dict[int, Lane] = {}
        room = size if scratch is None else scratch
        self._rest = np.empty(room, np.float64)
        self._piece = np.empty(room, np.float64)
        self._since_normalized = 0

    @property
    def bins(self) -> int:
        """How many float64 lanes the sum holds (memory is ``8 * size`` bytes each)."""
        return len(self._bins)

    def add(self, values: npt.NDArray[np.float32], weight: float, start: int = 0) -> None:
        """Add ``weight * values`` to coordinates ``start .. start + len(values)``.

        Raises:
            ValueError: for a weight outside ``[1, 2**53]`` or a non-finite value.
        """
        self.add_parts((values,), weight, start)

    def add_parts(
        self, parts: Sequence[npt.NDArray[np.float32]], weight: float, start: int = 0
    ) -> None:
        """:meth:`add` the arrays ``parts`` laid end to end (a model's tensors, say) at once.

        One pass over the whole model costs far less than one per tensor.

        Raises:
            ValueError: for a weight outside ``[1, 2**53]`` or a non-finite value.
        """
        if not 1.0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be in [1, 2**53], got {weight}")
        n = sum(p.size for p in parts)
        rest, piece = self._rest[:n], self._piece[:n]
        offset = 0
        for p in parts:  # widened by plain copies: a ufunc would buffer the cast
            rest[offset : offset + p.size] = p.reshape(-1)
            offset += p.size
        rest *= weight  # float64: exact for integer weights below 2**29
        np.abs(rest, out=piece)
        top = float(piece.max()) if n else 0.0
        if not math.isfinite(top):
            raise ValueError("values must be finite")
        if top == 0.0:
            return
        j = (math.frexp(top)[1] - 1) // BIN_BITS  # top < 2**(W * (j + 1))
        low = _lowest_bin(piece, weight, all(p.dtype == np.float32 for p in parts))
        if low < _J_MIN:
            raise ValueError("a term below 2**-201: values times weight out of range")
        while j > low:
            c = 1.5 * math.ldexp(1.0, BIN_BITS * j + 52)
            np.add(rest, c, out=piece)
            np.subtract(piece, c, out=piece)  # rest rounded to a multiple of 2**(W*j), exactly
            self._add_to(j, piece, start)
            np.subtract(rest, piece, out=rest)
            j -= 1
        # what is left is a multiple of the lowest bin's unit: it goes in whole
        self._add_to(low, rest, start)
        self._since_normalized += 1
        if self._since_normalized >= NORMALIZE_EVERY:
            self._normalize(self._bins)

    def total(self) -> Lane:
        """The sum as float64, a function of the exact sum alone (new array).

        Worked out a block of coordinates at a time, so its temporaries stay small.
        """
        out = np.zeros(self._size, np.float64)
        for start in range(0, self._size, _BLOCK):
            stop = min(start + _BLOCK, self._size)
            bins = {j: lane[start:stop].copy() for j, lane in self._bins.items()}
            if bins:
                out[start:stop] = _digits_total(bins)
        return out

    def _add_to(self, j: int, piece: Lane, start: int) -> None:
        """Add ``piece`` into bin ``j``; a bin is only created for a nonzero piece, as the
        lowest bin's bound is conservative."""
        lane = self._bins.get(j)
        if lane is None:
            if float(piece.max()) == 0.0 and float(piece.min()) == 0.0:
                return  # two reductions cost less than one count_nonzero over floats
            lane = self._bins[j] = np.zeros(self._size, np.float64)
        part = lane[start : start + piece.size]
        np.add(part, piece, out=part)

    def _normalize(self, bins: dict[int, Lane]) -> None:
        _normalize(bins)
        self._since_normalized = 0


def _lowest_bin(magnitudes: Lane, weight: float, float32: bool) -> int:
    """The lowest bin any term has a bit in; ``magnitudes`` are the terms' absolute values.

    A float64 term ``t`` with ``2**(e - 1) <= |t| < 2**e`` is a multiple of ``2**(e - 53)``.
    A float32 value ``v`` is a multiple of ``2**(ev - 24)``, and an integer weight ``w``
    keeps that (rounding the product only drops lower bits), where ``ev >= e - ew - 1``;
    below ``2**29`` the product is exact and ``ev`` is read off ``|t| / w`` exactly.
    The smallest nonzero term bounds every term's lowest bit from below. It is found on
    the terms' bit patterns, where a nonzero magnitude's order is its integer order and
    ``pattern - 1`` sends zero to the largest integer; ``magnitudes`` is scratch and is
    overwritten, so an add allocates nothing.
    """
    bits = magnitudes.view(np.uint64)
    np.subtract(bits, np.uint64(1), out=bits)
    smallest = float(np.array(bits.min() + np.uint64(1), np.uint64).view(np.float64))
    e = math.frexp(smallest)[1]
    if float32 and float(weight).is_integer() and weight < _EXACT_WEIGHT:
        lowest_bit = math.frexp(smallest / weight)[1] - 24  # the product was exact: so is this
    elif float32 and float(weight).is_integer():
        lowest_bit = e - math.frexp(weight)[1] - 25
    else:
        lowest_bit = e - 53
    return lowest_bit // BIN_BITS


#: coordinates worked on at a time when reading the total
_BLOCK = 1 << 16


def _normalize(bins: dict[int, Lane]) -> None:
    """Carry upwards (exactly) until each digit below the top is in ``[0, unit)`` and the
    top is in ``[-unit, unit)``; the represented sum does not change."""
    j = min(bins)
    while j <= max(bins):  # bins may have gaps; carrying fills them in
        lane, unit = bins.get(j), _unit(j + 1)
        if lane is None:
            j += 1
            continue
        if j == max(bins) and float(lane.max()) < unit and float(lane.min()) >= -unit:
            break
        # floor(lane / unit) * unit is exact: dividing by a power of two only shifts
        carry = np.floor(lane / unit) * unit
        lane -= carry
        upper = bins.get(j + 1)
        if upper is None:
            upper = bins[j + 1] = np.zeros(lane.size, np.float64)
        upper += carry
        j += 1


def _digits_total(bins: dict[int, Lane]) -> Lane:
    """The float64 of the sum ``bins`` hold, from its unique digits (``bins`` is consumed)."""
    _normalize(bins)
    # digits below the top are in [0, unit); the top's sign is the sum's sign
    negative = bins[max(bins)] < 0
    for lane in bins.values():
        np.negative(lane, out=lane, where=negative)
    _normalize(bins)  # now every digit of |sum| is in [0, unit): a unique form
    out = np.zeros(negative.size, np.float64)
    for j in sorted(bins, reverse=True):
        out += bins[j]
    np.negative(out, out=out, where=negative)
    return out
