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

The bins an add can reach are known before it starts, from the largest and the
smallest nonzero magnitude (one pass over the float32 bit patterns), and are
made then; a compiled loop (:mod:`coordinator.spread`) then cuts and adds every
term in one pass when they are at most three, numpy's passes otherwise.

Mergeable: two sums' bins add exactly (digits are integers in a bin's unit), so
partial sums made anywhere (site aggregators, ingest workers) merge into the sum
of all their terms, and any tree of merges ends in the same sum. :meth:`state`
is the sum's canonical form (:class:`protocol.sumstate.SumState`), a function of
the exact sum alone: equal sums give equal digits, whatever the order or tree.

Invariants: terms are float32 values times a weight in ``[1, 2**53]``, so each
is a finite multiple of ``2**-173`` below ``2**181``; memory is one float64 lane
per bin in use (typically three) plus two scratch lanes, O(model) whatever the
number of adds; nothing is allocated per add once the bins exist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from coordinator import spread
from protocol.sumstate import DIGIT_BITS, LOWEST_DIGIT, SumState, check_canonical

#: bits per bin: a piece is below 2**W units, so 2**(53 - W) pieces fit a lane exactly
BIN_BITS = DIGIT_BITS
#: carries are pushed up this often; 2**13 pieces of <= 2**40 units would fill 53 bits
NORMALIZE_EVERY = 2**12
#: the weight range that keeps every term a multiple of 2**-173 below 2**181
MAX_WEIGHT = float(2**53)
#: float32 bit patterns at or above this are Inf or NaN
_NON_FINITE_BITS = 0x7F800000
#: bins the compiled loops cut a term into at most (spread1..spread3)
_COMPILED_BINS = 3

Lane = npt.NDArray[np.float64]
Values = npt.NDArray[np.float32]


def _unit(j: int) -> float:
    return math.ldexp(1.0, BIN_BITS * j)


def _cut(j: int) -> float:
    """The constant whose add and subtract round a term below ``2**(W * (j + 1))`` to a
    multiple of bin ``j``'s unit (its ulp is that unit)."""
    return 1.5 * math.ldexp(1.0, BIN_BITS * j + 52)


class ExactSum:
    """``sum(weight_i * values_i)`` over flat float32 arrays, exactly; see the module doc."""

    def __init__(self, size: int, *, scratch: int | None = None,
                 compiled: bool | None = None) -> None:
        """``size`` coordinates; adds touch slices of at most ``scratch`` (default ``size``).

        ``compiled``: use :mod:`coordinator.spread`'s loops (default: when numba is
        installed); False runs numpy alone, with the same result.
        """
        if compiled and not spread.AVAILABLE:
            raise ValueError("compiled exact sum asked for, but numba is not installed")
        self._size = size
        use = spread.AVAILABLE if compiled is None else compiled
        self._kernels = spread.kernels() if use else None
        self._bins: dict[int, Lane] = {}
        self._room = size if scratch is None else scratch
        self._scratch: tuple[Lane, Lane] | None = None
        self._since_normalized = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def bins(self) -> int:
        """How many float64 lanes the sum holds (memory is ``8 * size`` bytes each)."""
        return len(self._bins)

    def add(self, values: Values, weight: float, start: int = 0) -> None:
        """Add ``weight * values`` to coordinates ``start .. start + len(values)``.

        Raises:
            ValueError: for a weight outside ``[1, 2**53]`` or a non-finite value.
        """
        self.add_parts((values,), weight, start)

    def add_parts(self, parts: Sequence[Values], weight: float, start: int = 0) -> None:
        """:meth:`add` the arrays ``parts`` laid end to end (a model's tensors, say) at once.

        All or nothing: every check is made before any bin changes.

        Raises:
            ValueError: for a weight outside ``[1, 2**53]`` or a non-finite value.
            TypeError: for an array that is not float32.
        """
        if not 1.0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be in [1, 2**53], got {weight}")
        flats = [_flat32(p) for p in parts]
        top_bits, low_bits = self._extent(flats)
        if top_bits >= _NON_FINITE_BITS:
            raise ValueError("values must be finite")
        if top_bits == 0:
            return  # all zero
        top = _as_float32(top_bits) * weight  # the largest term: rounding is monotonic
        j = (math.frexp(top)[1] - 1) // BIN_BITS  # every term is below 2**(W * (j + 1))
        low = _lowest_bin(_as_float32(low_bits + 1), weight)
        for b in range(low, j + 1):
            if b not in self._bins:
                self._bins[b] = np.zeros(self._size, np.float64)
        if self._kernels is not None and j - low < _COMPILED_BINS:
            self._spread_compiled(self._kernels, flats, weight, start=start, j=j, low=low)
        else:
            self._spread_numpy(flats, weight, start=start, j=j, low=low)
        self._since_normalized += 1
        if self._since_normalized >= NORMALIZE_EVERY:
            self._normalize()

    def merge(self, state: SumState) -> None:
        """Add another exact sum, given by its state, into this one: exactly.

        Raises:
            ValueError: for a state over another number of coordinates.
        """
        if state.size != self._size:
            raise ValueError(f"a sum over {state.size} coordinates, not {self._size}")
        for k, digits in enumerate(state.digits):
            j = state.low + k
            lane = self._bins.get(j)
            if lane is None:
                lane = self._bins[j] = np.zeros(self._size, np.float64)
            lane += digits.astype(np.float64) * _unit(j)  # |digit| <= 2**40: exact
        self._since_normalized += 1  # a digit row is no larger than one add's piece
        if self._since_normalized >= NORMALIZE_EVERY:
            self._normalize()

    @classmethod
    def from_state(cls, state: SumState, *, compiled: bool | None = None) -> ExactSum:
        """A sum holding ``state``, to add to or merge into."""
        total = cls(state.size, compiled=compiled)
        total.merge(state)
        return total

    def state(self) -> SumState:
        """The sum's canonical digits: equal for equal sums, whatever the order of adds or
        the tree of merges that made them (a copy; this sum is unchanged)."""
        bins = {j: lane.copy() for j, lane in self._bins.items()}
        if not bins:
            return SumState(0, np.zeros((0, self._size), np.int64))
        _normalize(bins)
        rows = [bins.get(j) for j in range(min(bins), max(bins) + 1)]
        lanes = [np.zeros(self._size) if r is None else r for r in rows]
        low = min(bins)
        while lanes and _redundant_top(lanes, low):
            top = lanes.pop()
            if lanes:
                lanes[-1] += top  # a top digit of 0 or -1 fits the digit below
        while lanes and not lanes[0].any():
            lanes.pop(0)
            low += 1
        if not lanes:
            return SumState(0, np.zeros((0, self._size), np.int64))
        digits = np.stack([lane / _unit(low + k) for k, lane in enumerate(lanes)])
        state = SumState(low, digits.astype(np.int64))  # integers below 2**41: exact
        check_canonical(state)
        return state

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

    def _extent(self, flats: list[Values]) -> tuple[int, int]:
        """The largest magnitude's bit pattern and the smallest nonzero one's minus one."""
        top, low = 0, 0xFFFFFFFF
        for flat in flats:
            if not flat.size:
                continue
            bits = flat.view(np.uint32)
            if self._kernels is not None:
                t, lo = self._kernels.extent(bits)
            else:
                magnitudes = self._lanes(flat.size)[0].view(np.uint32)[: flat.size]
                np.bitwise_and(bits, np.uint32(0x7FFFFFFF), out=magnitudes)
                t = int(magnitudes.max())
                np.subtract(magnitudes, np.uint32(1), out=magnitudes)  # 0 wraps to the top
                lo = int(magnitudes.min())
            top, low = max(top, t), min(low, lo)
        return top, low

    def _spread_compiled(self, kernels: spread.Kernels, flats: list[Values], weight: float,
                         *, start: int, j: int, low: int) -> None:
        offset = start
        for flat in flats:
            where = slice(offset, offset + flat.size)
            if j == low:
                kernels.spread1(self._bins[j][where], flat, weight)
            elif j == low + 1:
                lanes2 = (self._bins[j][where], self._bins[low][where])
                kernels.spread2(lanes2, flat, weight, _cut(j))
            else:
                lanes3 = (self._bins[j][where], self._bins[j - 1][where], self._bins[low][where])
                kernels.spread3(lanes3, flat, weight, (_cut(j), _cut(j - 1)))
            offset += flat.size

    def _spread_numpy(self, flats: list[Values], weight: float, *, start: int, j: int,
                      low: int) -> None:
        n = sum(f.size for f in flats)
        rest, piece = (lane[:n] for lane in self._lanes(n))
        offset = 0
        for f in flats:  # widened by plain copies: a ufunc would buffer the cast
            rest[offset : offset + f.size] = f
            offset += f.size
        rest *= weight  # float64, rounded as the compiled loops round it
        where = slice(start, start + n)
        while j > low:
            c = _cut(j)
            np.add(rest, c, out=piece)
            np.subtract(piece, c, out=piece)  # rest rounded to a multiple of 2**(W*j), exactly
            np.add(self._bins[j][where], piece, out=self._bins[j][where])
            np.subtract(rest, piece, out=rest)
            j -= 1
        # what is left is a multiple of the lowest bin's unit: it goes in whole
        np.add(self._bins[low][where], rest, out=self._bins[low][where])

    def _lanes(self, n: int) -> tuple[Lane, Lane]:
        """Two float64 scratch lanes for the numpy path, made on its first use."""
        if n > self._room:
            raise ValueError(f"an add of {n} coordinates exceeds the scratch of {self._room}")
        if self._scratch is None:
            self._scratch = (np.empty(self._room, np.float64), np.empty(self._room, np.float64))
        return self._scratch

    def _normalize(self) -> None:
        _normalize(self._bins)
        self._since_normalized = 0


def _flat32(values: Values) -> Values:
    """``values`` as one contiguous float32 row (a copy only for a strided view).

    Raises:
        TypeError: for another dtype: a float64 would be rounded without a word.
    """
    if values.dtype != np.float32:
        raise TypeError(f"the exact sum adds float32 arrays, got {values.dtype}")
    return np.ascontiguousarray(values).reshape(-1)


def _as_float32(bits: int) -> float:
    return float(np.array(bits, np.uint32).view(np.float32))


def _lowest_bin(smallest: float, weight: float) -> int:
    """The lowest bin any term has a bit in; ``smallest`` is the smallest nonzero |value|.

    A float32 ``v`` with ``2**(e - 1) <= |v| < 2**e`` is a multiple of ``2**(e - 24)``
    (subnormals too), and so is every larger float32. With an integer weight the exact
    product keeps that, and rounding it to 53 bits either leaves it exact or rounds to a
    coarser power-of-two grid, so every term is a multiple of ``2**(e - 24)``. Otherwise
    a term ``t`` is a multiple of its own ``ulp``, at least that of ``smallest * weight``,
    since rounding is monotonic.
    """
    if float(weight).is_integer():
        lowest_bit = math.frexp(smallest)[1] - 24
    else:
        lowest_bit = math.frexp(smallest * weight)[1] - 53
    j = lowest_bit // BIN_BITS
    if j < LOWEST_DIGIT:  # unreachable for float32 values and weights in range
        raise ValueError("a term below 2**-240: values times weight out of range")
    return j


def _redundant_top(lanes: list[Lane], low: int) -> bool:
    """Whether the top lane (normalised) can go: all zero, or all 0 or -1 digits with a
    lane below to take them."""
    top, unit = lanes[-1], _unit(low + len(lanes) - 1)
    if len(lanes) == 1:
        return not top.any()
    return float(top.max()) <= 0.0 and float(top.min()) >= -unit


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
