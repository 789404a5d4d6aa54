"""Aggregators: fold accepted deltas into one, one update at a time.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (FedAvg), AISTATS 2017: the sample-weighted average.

Streaming aggregators keep one float64 accumulator per tensor, so memory is
O(model) whatever the number of agents; an aggregator that must see every
update at once (a robust one) says so with ``needs_all``. Aggregators never
mutate the arrays they are given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from protocol import Weights

Shapes = Mapping[str, tuple[int, ...]]

AGGREGATORS = ("fedavg", "mean")


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The combined delta of one round and what went into it."""

    delta: Weights
    count: int
    total_weight: float


class Aggregator(Protocol):
    """Combines the deltas of one round."""

    #: True if the aggregator keeps every update (memory O(agents x model))
    needs_all: bool

    def add(self, delta: Weights, weight: float) -> None: ...

    def result(self) -> Aggregate: ...


class WeightedMean:
    """Running ``sum(w_i * delta_i) / sum(w_i)``; FedAvg with ``w_i`` = samples."""

    needs_all = False

    def __init__(self, shapes: Shapes, *, by_samples: bool = True) -> None:
        self._by_samples = by_samples
        # float64 accumulators: summing thousands of float32 deltas loses no precision
        self._sum: dict[str, npt.NDArray[np.float64]] = {
            name: np.zeros(shape, dtype=np.float64) for name, shape in shapes.items()
        }
        self._scratch = {name: np.empty(shape, np.float64) for name, shape in shapes.items()}
        self._count = 0
        self._total = 0.0

    def add(self, delta: Weights, weight: float) -> None:
        w = float(weight) if self._by_samples else 1.0
        if not w > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        for name, acc in self._sum.items():
            scratch = self._scratch[name]
            np.multiply(delta[name], w, out=scratch)  # in place: no per-update allocation
            np.add(acc, scratch, out=acc)
        self._count += 1
        self._total += w

    def result(self) -> Aggregate:
        if self._count == 0:
            raise ValueError("no update was added")
        delta = {n: (acc / self._total).astype(np.float32) for n, acc in self._sum.items()}
        return Aggregate(delta=delta, count=self._count, total_weight=self._total)


def make_aggregator(name: str, shapes: Shapes) -> Aggregator:
    """Build the aggregator called ``name`` for a model of ``shapes``.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "fedavg":
        return WeightedMean(shapes, by_samples=True)
    if name == "mean":
        return WeightedMean(shapes, by_samples=False)
    raise ValueError(f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}")


def apply_delta(weights: Weights, delta: Weights) -> Weights:
    """The next global model: ``weights + delta``, float32, new arrays."""
    return {name: (w + delta[name]).astype(np.float32) for name, w in weights.items()}
