"""Partitioners: W1's exact indices, and disjoint, covering, reproducible shards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmq.tasks.partition import (
    Partition,
    agent_indices,
    dirichlet,
    iid,
    parse_partition,
    shards,
)


def _all(spec: str, labels: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    return [agent_indices(spec, labels, k, n, seed) for k in range(n)]


def _assert_disjoint_cover(parts: list[np.ndarray], total: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == total
    assert np.array_equal(np.sort(joined), np.arange(total))
    assert all(len(p) >= 1 for p in parts)
    assert all(p.dtype == np.int64 for p in parts)


def test_iid_is_w1_exactly() -> None:
    perm = np.random.default_rng(0).permutation(10000)
    for k in range(20):
        assert np.array_equal(iid(10000, k, 20, 0), perm[500 * k : 500 * (k + 1)])


def test_shards_is_w1_noniid_exactly() -> None:
    y = np.random.default_rng(7).integers(0, 10, size=10000).astype(np.int64)
    order = np.argsort(y, kind="stable")
    sp = np.random.default_rng(0).permutation(40)
    for k in range(20):
        want = np.concatenate(
            [
                order[250 * sp[2 * k] : 250 * (sp[2 * k] + 1)],
                order[250 * sp[2 * k + 1] : 250 * (sp[2 * k + 1] + 1)],
            ]
        )
        assert np.array_equal(shards(y, k, 20, 0), want)


def test_shards_give_each_agent_few_classes() -> None:
    y = np.repeat(np.arange(10, dtype=np.int64), 1000)
    parts = _all("shards", y, 20)
    assert max(len(np.unique(y[p])) for p in parts) <= 2


@pytest.mark.parametrize(
    "spec", ["iid", "shards", "dirichlet:0.5", "dirichlet:0.01", "dirichlet:100"]
)
@pytest.mark.parametrize(("total", "n"), [(10000, 20), (1003, 7), (50, 10), (23, 1)])
def test_disjoint_covering_reproducible(spec: str, total: int, n: int) -> None:
    y = np.random.default_rng(1).integers(0, 10, size=total).astype(np.int64)
    parts = _all(spec, y, n, seed=3)
    _assert_disjoint_cover(parts, total)
    again = _all(spec, y, n, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_uneven_sizes_differ_by_at_most_one() -> None:
    sizes = [len(iid(1003, k, 7, 0)) for k in range(7)]
    assert sizes == [144, 144, 143, 143, 143, 143, 143]


@pytest.mark.parametrize("spec", ["iid", "shards", "dirichlet:0.5"])
def test_seed_changes_the_split(spec: str) -> None:
    y = np.random.default_rng(1).integers(0, 10, size=2000).astype(np.int64)
    assert not np.array_equal(agent_indices(spec, y, 0, 10, 0), agent_indices(spec, y, 0, 10, 1))


def test_dirichlet_alpha_controls_skew() -> None:
    y = np.repeat(np.arange(10, dtype=np.int64), 500)

    def mean_top_class_share(alpha: float) -> float:
        parts = [dirichlet(y, k, 10, 0, alpha) for k in range(10)]
        return float(np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts]))

    assert mean_top_class_share(0.05) > 0.6
    assert mean_top_class_share(1000.0) < 0.2


def test_dirichlet_fills_empty_agents() -> None:
    y = np.zeros(30, dtype=np.int64)
    parts = [dirichlet(y, k, 30, 0, 0.01) for k in range(30)]
    _assert_disjoint_cover(parts, 30)
    assert all(len(p) == 1 for p in parts)


@given(
    total=st.integers(1, 400),
    n=st.integers(1, 25),
    spec=st.sampled_from(["iid", "shards", "dirichlet:0.3", "dirichlet:5"]),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=150, deadline=None)
def test_property_disjoint_cover(total: int, n: int, spec: str, seed: int) -> None:
    pieces = 2 * n if spec == "shards" else n
    y = np.random.default_rng(seed).integers(0, 4, size=total).astype(np.int64)
    if total < pieces:
        with pytest.raises(ValueError, match="non-empty pieces"):
            agent_indices(spec, y, 0, n, seed)
        return
    _assert_disjoint_cover(_all(spec, y, n, seed), total)


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("iid", Partition("iid")),
        (" shards ", Partition("shards")),
        ("dirichlet:0.5", Partition("dirichlet", 0.5)),
        ("dirichlet:1e-2", Partition("dirichlet", 0.01)),
    ],
)
def test_parse_partition(spec: str, want: Partition) -> None:
    assert parse_partition(spec) == want
    assert parse_partition(str(want)) == want


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "noniid",
        "iid:2",
        "shards:",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:x",
    ],
)
def test_bad_partition_spec_names_itself(spec: str) -> None:
    with pytest.raises(ValueError, match="bad partition spec") as info:
        parse_partition(spec)
    assert repr(spec) in str(info.value)


def test_bad_shard_and_labels() -> None:
    y = np.zeros(100, dtype=np.int64)
    with pytest.raises(ValueError, match="shard 5 of 5"):
        agent_indices("iid", y, 5, 5, 0)
    with pytest.raises(ValueError, match="shard -1"):
        agent_indices("iid", y, -1, 5, 0)
    with pytest.raises(ValueError, match="integer class labels"):
        agent_indices("dirichlet:1", y.astype(np.float32), 0, 5, 0)
    with pytest.raises(ValueError, match="1-D labels"):
        agent_indices("shards", np.zeros((100, 2), dtype=np.float32), 0, 5, 0)


def test_shards_sort_regression_targets() -> None:
    y = np.random.default_rng(0).normal(size=400).astype(np.float32)
    parts = _all("shards", y, 4)
    _assert_disjoint_cover(parts, 400)
