"""Streaming aggregation checked against an independent oracle, ``np.average``."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import make_aggregator
from coordinator.aggregate import apply_delta
from protocol import Weights
from protocol.compress import Shapes
from tests.helpers import copy_weights, weights_equal

SHAPES: dict[str, tuple[int, ...]] = {"w": (6, 3), "b": (3,), "scale": ()}


def random_deltas(rng: np.random.Generator, shapes: Shapes, count: int) -> list[Weights]:
    return [
        {n: rng.normal(0.0, 1.0, size=s).astype(np.float32) for n, s in shapes.items()}
        for _ in range(count)
    ]


def np_average(deltas: list[Weights], weights: Sequence[float]) -> Weights:
    return {
        name: np.average(np.stack([d[name] for d in deltas]), axis=0, weights=weights).astype(
            np.float32
        )
        for name in deltas[0]
    }


def assert_close(actual: Weights, expected: Weights) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == np.float32
        assert actual[name].shape == expected[name].shape
        # float64 sums in another order round differently in the last float32 bit
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-7)


def _arrays(obj: Any, seen: set[int] | None = None) -> Iterator[npt.NDArray[Any]]:
    """Every ndarray reachable from ``obj``'s attributes, dicts, lists and tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _arrays(value, seen)
    elif isinstance(obj, list | tuple | set):
        for value in obj:
            yield from _arrays(value, seen)
    elif hasattr(obj, "__dict__"):
        yield from _arrays(vars(obj), seen)


def held(aggregator: Any) -> tuple[int, int]:
    arrays = list(_arrays(aggregator))
    return len(arrays), sum(a.nbytes for a in arrays)


# --- FedAvg and mean against the oracle ---------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 7, 50])
def test_fedavg_equals_np_average_weighted_by_samples(count: int) -> None:
    rng = np.random.default_rng([0, count])
    deltas = random_deltas(rng, SHAPES, count)
    samples = [int(s) for s in rng.integers(1, 5000, size=count)]
    aggregator = make_aggregator("fedavg", SHAPES)
    for delta, n in zip(deltas, samples, strict=True):
        aggregator.add(delta, n)

    result = aggregator.result()

    assert_close(result.delta, np_average(deltas, samples))
    assert result.count == count
    assert result.total_weight == sum(samples)


def test_fedavg_applied_to_the_global_model_equals_the_oracle() -> None:
    rng = np.random.default_rng(1)
    global_w = random_deltas(rng, SHAPES, 1)[0]
    deltas = random_deltas(rng, SHAPES, 5)
    samples = [10, 500, 3, 77, 1]
    aggregator = make_aggregator("fedavg", SHAPES)
    for delta, n in zip(deltas, samples, strict=True):
        aggregator.add(delta, n)

    new = apply_delta(global_w, aggregator.result().delta)

    oracle = np_average(deltas, samples)
    assert_close(new, {n: (global_w[n] + oracle[n]).astype(np.float32) for n in global_w})


def test_mean_equals_the_unweighted_mean_whatever_the_sample_counts() -> None:
    rng = np.random.default_rng(2)
    deltas = random_deltas(rng, SHAPES, 6)
    aggregator = make_aggregator("mean", SHAPES)
    for delta, n in zip(deltas, [1, 10, 100, 1000, 10_000, 100_000], strict=True):
        aggregator.add(delta, n)

    result = aggregator.result()

    expected = {n: np.mean(np.stack([d[n] for d in deltas]), axis=0) for n in SHAPES}
    assert_close(result.delta, {n: a.astype(np.float32) for n, a in expected.items()})
    assert result.total_weight == 6.0


shapes_strategy = st.dictionaries(
    keys=st.text(alphabet="abcdefgh", min_size=1, max_size=4),
    values=st.lists(st.integers(1, 5), max_size=3).map(tuple),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    shapes=shapes_strategy,
    samples=st.lists(st.integers(1, 10**6), min_size=1, max_size=20),
    seed=st.integers(0, 2**32 - 1),
)
def test_fedavg_matches_np_average_for_any_shapes_and_counts(
    shapes: dict[str, tuple[int, ...]], samples: list[int], seed: int
) -> None:
    deltas = random_deltas(np.random.default_rng(seed), shapes, len(samples))
    aggregator = make_aggregator("fedavg", shapes)
    for delta, n in zip(deltas, samples, strict=True):
        aggregator.add(delta, n)
    assert_close(aggregator.result().delta, np_average(deltas, samples))


@settings(max_examples=30, deadline=None)
@given(count=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_fedavg_of_identical_deltas_is_that_delta(count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    delta = random_deltas(rng, SHAPES, 1)[0]
    aggregator = make_aggregator("fedavg", SHAPES)
    for n in rng.integers(1, 1000, size=count):
        aggregator.add(delta, int(n))
    assert_close(aggregator.result().delta, delta)


# --- memory: O(model), whatever the number of updates ---------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "mean"])
def test_aggregator_holds_a_fixed_set_of_arrays_however_many_updates(name: str) -> None:
    rng = np.random.default_rng(3)
    shapes = {"w": (64, 32), "b": (32,)}
    model_bytes = 4 * (64 * 32 + 32)
    aggregator = make_aggregator(name, shapes)
    assert not aggregator.needs_all
    deltas = random_deltas(rng, shapes, 4)
    aggregator.add(deltas[0], 1)
    after_one = held(aggregator)

    for k in range(300):
        aggregator.add(deltas[k % 4], k + 1)

    assert held(aggregator) == after_one
    count, nbytes = after_one
    # an exact sum (coordinator/exactsum.py): a float64 lane per bin in use, here at most
    # three, and two float64 scratch lanes = at most 10x the float32 model
    assert count <= 5
    assert nbytes <= 10 * model_bytes


def test_adding_updates_allocates_no_memory_per_update() -> None:
    shapes = {"w": (256, 256)}
    model_bytes = 4 * 256 * 256
    deltas = random_deltas(np.random.default_rng(4), shapes, 2)
    aggregator = make_aggregator("fedavg", shapes)
    aggregator.add(deltas[0], 1)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for k in range(200):
            aggregator.add(deltas[k % 2], k + 1)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current - base < model_bytes // 4  # nothing kept per update
    assert peak - base < model_bytes // 4  # nor a temporary the size of the model


# --- contract: inputs untouched, bad weights refused, results stable ---------------------------


def test_aggregator_never_mutates_its_inputs_and_accepts_read_only_arrays() -> None:
    deltas = random_deltas(np.random.default_rng(5), SHAPES, 3)
    originals = [copy_weights(d) for d in deltas]
    for delta in deltas:
        for arr in delta.values():
            arr.flags.writeable = False  # decoded wire arrays are read-only views
    aggregator = make_aggregator("fedavg", SHAPES)
    for delta in deltas:
        aggregator.add(delta, 3)
    result = aggregator.result()

    for delta, original in zip(deltas, originals, strict=True):
        assert weights_equal(delta, original)
    assert all(result.delta[n] is not deltas[0][n] for n in SHAPES)


@pytest.mark.parametrize("weight", [0, -1, float("nan")])
def test_non_positive_weight_is_refused_and_changes_nothing(weight: float) -> None:
    deltas = random_deltas(np.random.default_rng(6), SHAPES, 2)
    aggregator = make_aggregator("fedavg", SHAPES)
    aggregator.add(deltas[0], 5)
    before = aggregator.result()

    with pytest.raises(ValueError, match="weight must be positive"):
        aggregator.add(deltas[1], weight)

    after = aggregator.result()
    assert weights_equal(after.delta, before.delta)
    assert (after.count, after.total_weight) == (1, 5.0)


def test_result_without_updates_is_an_error() -> None:
    with pytest.raises(ValueError, match="no update"):
        make_aggregator("fedavg", SHAPES).result()


def test_result_is_repeatable_and_adding_continues_afterwards() -> None:
    deltas = random_deltas(np.random.default_rng(7), SHAPES, 3)
    aggregator = make_aggregator("fedavg", SHAPES)
    aggregator.add(deltas[0], 1)
    aggregator.add(deltas[1], 2)
    first = aggregator.result()
    assert weights_equal(aggregator.result().delta, first.delta)

    aggregator.add(deltas[2], 3)

    assert_close(aggregator.result().delta, np_average(deltas, [1, 2, 3]))


def test_unknown_aggregator_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown aggregator 'mode'"):
        make_aggregator("mode", SHAPES)


def test_apply_delta_returns_new_float32_arrays_and_leaves_its_inputs() -> None:
    rng = np.random.default_rng(8)
    global_w, delta = random_deltas(rng, SHAPES, 2)
    global_before, delta_before = copy_weights(global_w), copy_weights(delta)

    new = apply_delta(global_w, delta)

    assert weights_equal(global_w, global_before) and weights_equal(delta, delta_before)
    for name in SHAPES:
        assert new[name].dtype == np.float32
        assert not np.shares_memory(new[name], global_w[name])
        np.testing.assert_array_equal(new[name], global_w[name] + delta[name])
