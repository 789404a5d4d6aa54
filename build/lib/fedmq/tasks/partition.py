"""Partitioners: which training rows agent ``shard`` of ``num_shards`` holds.

Invariants: pure numpy, no I/O; a function of (spec, labels, shard, num_shards,
seed) only, so every agent computes its own rows without coordination and the
rows of all agents are disjoint and cover the training set. Specs:

- ``iid``: ``perm = default_rng(seed).permutation(N)``, cut into contiguous
  runs; with ``N % n == 0`` agent k gets ``perm[k*m : (k+1)*m]``, ``m = N // n``
  (W1). Otherwise the first ``N % n`` agents get one row more.
- ``shards``: ``order = argsort(y, kind="stable")`` cut into ``2n`` shards
  (equal when ``N % 2n == 0``, else the first ones one row longer);
  ``sp = default_rng(seed).permutation(2n)``; agent k gets shard ``sp[2k]``
  then ``sp[2k+1]`` (W1-noniid; McMahan et al. 2017, "pathological non-IID").
- ``dirichlet:ALPHA``: per class, proportions ``~ Dir(ALPHA * 1_n)`` (Hsu et
  al. 2019, arXiv:1909.06335); smaller ALPHA is more skewed. Agents left empty
  take one row each from the then-largest agent, so everyone trains.

References: DESIGN.md, "Workload W1" (the exact iid and shards indices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Indices = npt.NDArray[np.int64]
PartitionKind = Literal["iid", "shards", "dirichlet"]

#: the spec forms :func:`parse_partition` accepts
PARTITIONS = ("iid", "shards", "dirichlet:ALPHA")


@dataclass(frozen=True, slots=True)
class Partition:
    """A parsed partition spec; ``str()`` gives the spec back."""

    kind: PartitionKind
    alpha: float | None = None

    def __str__(self) -> str:
        return self.kind if self.alpha is None else f"{self.kind}:{self.alpha:g}"


def parse_partition(spec: str) -> Partition:
    """Parse ``iid``, ``shards`` or ``dirichlet:ALPHA`` (ALPHA a positive number).

    Raises:
        ValueError: naming the spec and the accepted forms.
    """
    kind, sep, arg = spec.strip().partition(":")
    if kind == "iid" and not sep:
        return Partition("iid")
    if kind == "shards" and not sep:
        return Partition("shards")
    if kind == "dirichlet" and sep:
        try:
            alpha = float(arg)
        except ValueError:
            alpha = math.nan
        if math.isfinite(alpha) and alpha > 0:
            return Partition("dirichlet", alpha)
    raise ValueError(
        f"bad partition spec {spec!r}; use one of {', '.join(PARTITIONS)} (ALPHA > 0, e.g. 0.5)"
    )


def _check(num_samples: int, shard: int, num_shards: int, pieces: int) -> None:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards}: need 0 <= shard < num_shards")
    if num_samples < pieces:
        raise ValueError(f"{num_samples} samples cannot be cut into {pieces} non-empty pieces")


def _bounds(total: int, pieces: int, i: int) -> tuple[int, int]:
    """Piece ``i`` of ``total`` rows cut into ``pieces`` runs differing by at most one."""
    base, extra = divmod(total, pieces)
    start = i * base + min(i, extra)
    return start, start + base + (1 if i < extra else 0)


def iid(num_samples: int, shard: int, num_shards: int, seed: int) -> Indices:
    """Agent ``shard``'s rows of a seeded uniform shuffle (W1's IID split).

    Raises:
        ValueError: for a shard out of range or fewer samples than agents.
    """
    _check(num_samples, shard, num_shards, num_shards)
    perm = np.random.default_rng(seed).permutation(num_samples)
    start, stop = _bounds(num_samples, num_shards, shard)
    return perm[start:stop].astype(np.int64)


def shards(labels: npt.NDArray[Any], shard: int, num_shards: int, seed: int) -> Indices:
    """Two label-sorted shards per agent (W1-noniid). 1-D float targets sort too.

    Raises:
        ValueError: for 2-D targets, a shard out of range, or fewer than 2n samples.
    """
    if labels.ndim != 1:
        raise ValueError(f"the shards partition sorts 1-D labels, got shape {labels.shape}")
    pieces = 2 * num_shards
    _check(len(labels), shard, num_shards, pieces)
    order = np.argsort(labels, kind="stable")
    sp = np.random.default_rng(seed).permutation(pieces)
    runs = [
        order[slice(*_bounds(len(labels), pieces, int(s)))] for s in sp[2 * shard : 2 * shard + 2]
    ]
    return np.concatenate(runs).astype(np.int64)


def dirichlet(
    labels: npt.NDArray[Any], shard: int, num_shards: int, seed: int, alpha: float
) -> Indices:
    """Agent ``shard``'s rows under per-class Dirichlet(alpha) proportions, sorted.

    Raises:
        ValueError: for non-integer or 2-D labels, alpha <= 0, a shard out of
            range, or fewer samples than agents.
    """
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"the dirichlet partition needs integer class labels, got {labels.dtype}")
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    _check(len(labels), shard, num_shards, num_shards)
    rng = np.random.default_rng(seed)
    owned: list[list[Indices]] = [[] for _ in range(num_shards)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.floor(np.cumsum(rng.dirichlet(np.full(num_shards, alpha)))[:-1] * len(rows))
        for agent, part in enumerate(np.split(rows, cuts.astype(np.int64))):
            owned[agent].append(part)
    parts = [np.concatenate(p).astype(np.int64) for p in owned]
    for agent in range(num_shards):
        if len(parts[agent]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[agent], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return np.sort(parts[shard])


def agent_indices(
    spec: str | Partition, labels: npt.NDArray[Any], shard: int, num_shards: int, seed: int
) -> Indices:
    """Dispatch on a partition spec: agent ``shard``'s row indices into the training set.

    Raises:
        ValueError: for a bad spec, or as the chosen partitioner does.
    """
    part = parse_partition(spec) if isinstance(spec, str) else spec
    if part.kind == "iid":
        return iid(len(labels), shard, num_shards, seed)
    if part.kind == "shards":
        return shards(labels, shard, num_shards, seed)
    assert part.alpha is not None  # parse_partition always sets it for dirichlet
    return dirichlet(labels, shard, num_shards, seed, part.alpha)
