"""The exact sum: merges of partial sums, its canonical state, compiled and numpy paths alike."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import spread
from coordinator.exactsum import ExactSum
from protocol import RejectReason, WireError
from protocol.sumstate import SumState, check_canonical, decode_state

SIZE = 4
PATHS = [False, True] if spread.AVAILABLE else [False]

float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)
rows = st.lists(float32s, min_size=SIZE, max_size=SIZE)
#: integer sample counts (exact products below 2**29, rounded ones above) and real weights
weights = st.one_of(st.integers(1, 2**40), st.floats(1.0, 2.0**53))
terms = st.lists(st.tuples(rows, weights), min_size=1, max_size=12)


def summed(items: list[tuple[list[float], Any]], compiled: bool = False) -> ExactSum:
    total = ExactSum(SIZE, compiled=compiled)
    for values, weight in items:
        total.add(np.array(values, np.float32), float(weight))
    return total


def exact(items: list[tuple[list[float], Any]]) -> list[Fraction]:
    """The true sum of the float64 terms the sum adds (each ``fl(value * weight)``)."""
    return [
        sum((Fraction(float(np.float64(np.float32(v[i])) * float(w))) for v, w in items),
             Fraction(0))
        for i in range(SIZE)
    ]


def value_of(state: SumState) -> list[Fraction]:
    return [
        sum((Fraction(int(state.digits[k, i])) * Fraction(2) ** (40 * (state.low + k))
             for k in range(state.digits.shape[0])), Fraction(0))
        for i in range(state.size)
    ]


def merged(states: list[SumState]) -> SumState:
    total = ExactSum(SIZE)
    for s in states:
        total.merge(s)
    return total.state()


@settings(max_examples=150, deadline=None)
@given(items=terms, data=st.data())
def test_any_tree_of_partial_sums_gives_the_flat_sum_bit_for_bit(items: Any, data: Any) -> None:
    flat = summed(items)
    # split the terms among partial sums at random, then merge those in a random tree
    groups = data.draw(st.lists(st.integers(0, 3), min_size=len(items), max_size=len(items)))
    parts = [summed([t for t, g in zip(items, groups, strict=True) if g == k]).state()
             for k in range(4)]
    order = data.draw(st.permutations(range(4)))
    left = merged([merged([parts[order[0]], parts[order[1]]]), parts[order[2]]])
    tree = merged([left, parts[order[3]]])
    assert tree.same(flat.state())
    assert tree.to_bytes() == flat.state().to_bytes()
    assert np.array_equal(ExactSum.from_state(tree).total(), flat.total())
    assert value_of(flat.state()) == exact(items)


@settings(max_examples=100, deadline=None)
@given(a=terms, b=terms, c=terms)
def test_merge_is_associative_and_commutative_bit_for_bit(a: Any, b: Any, c: Any) -> None:
    sa, sb, sc = (summed(t).state() for t in (a, b, c))
    assert merged([merged([sa, sb]), sc]).same(merged([sa, merged([sb, sc])]))
    assert merged([sa, sb]).same(merged([sb, sa]))
    assert merged([sa, sb, sc]).to_bytes() == summed(a + b + c).state().to_bytes()


@pytest.mark.skipif(not spread.AVAILABLE, reason="numba is not installed")
@settings(max_examples=150, deadline=None)
@given(items=terms)
def test_the_compiled_loops_hold_what_numpy_holds(items: Any) -> None:
    compiled, plain = summed(items, compiled=True), summed(items, compiled=False)
    assert compiled.state().same(plain.state())
    assert np.array_equal(compiled.total(), plain.total())


@pytest.mark.parametrize("compiled", PATHS)
def test_a_real_sized_sum_is_exact_on_either_path(compiled: bool) -> None:
    # wide magnitudes put terms in three bins and more (the compiled loops take up to three)
    rng = np.random.default_rng(0)
    scales = [1e-3, 1e-30, 1e20]
    arrays = [(rng.normal(0, s, 1000).astype(np.float32), w)
              for s in scales for w in (1, 500, 2**33 + 1)]
    total = ExactSum(1000, compiled=compiled)
    for values, w in arrays:
        total.add(values, w)
    state = total.state()
    for i in (0, 17, 999):
        want = sum(Fraction(float(np.float64(v[i]) * w)) for v, w in arrays)
        got = sum(Fraction(int(state.digits[k, i])) * Fraction(2) ** (40 * (state.low + k))
                  for k in range(state.digits.shape[0]))
        assert got == want


@settings(max_examples=100, deadline=None)
@given(items=terms)
def test_a_state_survives_its_wire_form_and_is_canonical(items: Any) -> None:
    state = summed(items).state()
    check_canonical(state)
    back = decode_state(state.low, state.digits.shape[0], state.size, state.to_bytes())
    assert back.same(state)


def test_the_zero_sum_has_no_digits_and_opposite_terms_cancel_to_it() -> None:
    total = ExactSum(SIZE)
    assert total.state().digits.shape == (0, SIZE)
    values = np.array([1.5, -2.0**-100, 3e30, 0.0], np.float32)
    total.add(values, 7)
    total.add(-values, 7)
    assert total.state().digits.shape == (0, SIZE)
    assert not total.total().any()


def test_a_negative_sum_keeps_its_sign_in_the_top_digit() -> None:
    total = ExactSum(2)
    total.add(np.array([-1.0, 2.0**-45], np.float32), 1)
    state = total.state()
    assert value_of(state) == [Fraction(-1), Fraction(2) ** -45]
    assert int(state.digits[-1].min()) < 0


@pytest.mark.parametrize(
    ("low", "digits", "why"),
    [
        (0, [[0, 0]], "lowest digit row is zero"),
        (0, [[1, 0], [0, -1]], "top digit row is redundant"),
        (0, [[-1, 0], [1, 0]], "below the top"),
        (0, [[2**40, 0]], "top digit"),
        (-7, [[1, 0]], "out of range"),
    ],
)
def test_a_state_that_is_not_canonical_or_out_of_range_is_refused(
    low: int, digits: list[list[int]], why: str
) -> None:
    raw = np.array(digits, "<i8")
    with pytest.raises(WireError) as info:
        decode_state(low, raw.shape[0], raw.shape[1], raw.tobytes())
    assert info.value.reason is RejectReason.BAD_STATE
    assert why in info.value.detail


def test_a_state_of_the_wrong_byte_count_is_refused() -> None:
    with pytest.raises(WireError) as info:
        decode_state(0, 1, 3, bytes(16))
    assert info.value.reason is RejectReason.BAD_STATE


def test_merging_a_sum_of_another_size_is_refused_and_changes_nothing() -> None:
    total = ExactSum(SIZE)
    total.add(np.ones(SIZE, np.float32), 2)
    before = total.state()
    with pytest.raises(ValueError, match="coordinates"):
        total.merge(SumState(0, np.ones((1, 3), np.int64)))
    assert total.state().same(before)


@pytest.mark.parametrize("compiled", PATHS)
def test_a_bad_add_changes_nothing(compiled: bool) -> None:
    total = ExactSum(SIZE, compiled=compiled)
    total.add(np.ones(SIZE, np.float32), 3)
    before = total.state()
    with pytest.raises(ValueError, match="finite"):
        total.add_parts([np.ones(2, np.float32), np.array([1.0, np.nan], np.float32)], 1)
    with pytest.raises(TypeError, match="float32"):
        total.add(np.ones(SIZE, np.float64), 1)  # type: ignore[arg-type]
    assert total.state().same(before)
