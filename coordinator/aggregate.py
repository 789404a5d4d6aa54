"""Aggregators: fold accepted deltas into one, one update at a time.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (FedAvg), AISTATS 2017: the sample-weighted average.

Streaming aggregators keep an exact running sum (:mod:`coordinator.exactsum`), so
memory is O(model) whatever the number of agents and the result does not depend
on the order updates arrived in; an aggregator that must see every update at
once (a robust one, :mod:`coordinator.robust`) says so with ``needs_all``.
Aggregators never mutate the arrays they are given. One that cannot produce a
sound result for the updates it holds raises :class:`AggregationError`, which
the round machine turns into its short-round policy; that is never a crash.
Which aggregator a spec string names is :mod:`coordinator.strategy`'s business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from coordinator.exactsum import ExactSum
from protocol import Weights
from protocol.compress import Shapes
from protocol.sumstate import SumState


class AggregationError(ValueError):
    """The aggregator refuses: the round's updates do not meet its requirement (it says which)."""


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

    def result(self) -> Aggregate:
        """The round's delta.

        Raises:
            AggregationError: when the updates added cannot give a sound result.
        """
        ...


@dataclass(frozen=True, slots=True, eq=False)
class PartialSum:
    """A streaming aggregator's exact state: merged into another, it is as if the other
    had been given the same updates (:meth:`Mergeable.merge`)."""

    total: SumState
    count: int
    total_weight: int


@runtime_checkable
class Mergeable(Protocol):
    """A streaming aggregator whose state travels: site aggregators and ingest workers sum
    their share, the coordinator merges the shares; a robust one (median, Krum) cannot."""

    def weight(self, samples: int) -> int:
        """The weight an update of ``samples`` samples gets (its share of ``total_weight``)."""
        ...

    def partial(self) -> PartialSum: ...

    def merge(self, partial: PartialSum) -> None:
        """Add another aggregator's state, exactly.

        Raises:
            ValueError: for a state over another model size.
        """
        ...


def mergeable(aggregator: Aggregator) -> Mergeable | None:
    """``aggregator`` if partial sums can be merged into it: streaming, with a state that
    travels (FedAvg, the plain mean, DP-FedAvg, each with or without norm clipping)."""
    if aggregator.needs_all or not isinstance(aggregator, Mergeable):
        return None
    return aggregator


class Layout:
    """Where each named tensor sits in one flat float32 vector of the whole model."""

    def __init__(self, shapes: Shapes) -> None:
        self.shapes = dict(shapes)
        self.slices: dict[str, slice] = {}
        start = 0
        for name, shape in self.shapes.items():
            size = int(np.prod(shape, dtype=np.int64))
            self.slices[name] = slice(start, start + size)
            start += size
        self.size = start
        #: the largest tensor: scratch space for work done one tensor at a time
        self.largest = max((s.stop - s.start for s in self.slices.values()), default=0)

    def check(self, delta: Weights) -> None:
        """Refuse a delta with a missing or misshapen tensor or a non-finite value.

        Raises:
            ValueError: naming the tensor.
        """
        self.check_shapes(delta)
        for name in self.shapes:
            arr = delta[name]
            # max and min propagate NaN and see Inf without a temporary the model's size
            if arr.size and not (math.isfinite(arr.max()) and math.isfinite(arr.min())):
                raise ValueError(f"delta {name!r} is not finite")

    def check_shapes(self, delta: Weights) -> None:
        """Refuse a delta with a missing or misshapen tensor.

        Raises:
            ValueError: naming the tensor.
        """
        for name, shape in self.shapes.items():
            arr = delta.get(name)
            if arr is None or arr.shape != shape:
                got = None if arr is None else arr.shape
                raise ValueError(f"delta {name!r}: want shape {shape}, got {got}")

    def unflatten(self, flat: npt.NDArray[np.float64]) -> Weights:
        """Float32 tensors from a flat float64 vector of means of float32 values (which fit)."""
        return {
            name: flat[where].astype(np.float32).reshape(self.shapes[name])
            for name, where in self.slices.items()
        }


class WeightedMean:
    """``sum(w_i * delta_i) / sum(w_i)``; FedAvg with ``w_i`` = samples.

    The sum is exact and the total weight a fraction, so the mean is the same
    float32 for every arrival order of the same updates.
    """

    needs_all = False

    def __init__(self, shapes: Shapes, *, by_samples: bool = True) -> None:
        self._by_samples = by_samples
        self._layout = Layout(shapes)
        self._sum = ExactSum(self._layout.size)
        self._count = 0
        self._total: Fraction | int = 0  # exact: sample counts are integers

    def add(self, delta: Weights, weight: float) -> None:
        w = float(weight) if self._by_samples else 1.0
        if not 1.0 <= w <= 2.0**53:
            raise ValueError(f"weight must be positive (a sample count), got {weight}")
        # All or nothing: a bad tensor must not leave a partial sum. ExactSum refuses a
        # non-finite value before it changes anything, so only shapes are checked here.
        self._layout.check_shapes(delta)
        self._sum.add_parts([delta[name] for name in self._layout.slices], w)
        self._count += 1
        self._total += int(w) if w.is_integer() else Fraction(w)

    def weight(self, samples: int) -> int:
        return samples if self._by_samples else 1

    def partial(self) -> PartialSum:
        """This sum's state; its weights are sample counts, so the total is an integer."""
        assert isinstance(self._total, int), "partial sums carry integer sample weights"
        return PartialSum(self._sum.state(), self._count, self._total)

    def merge(self, partial: PartialSum) -> None:
        self._sum.merge(partial.total)
        self._count += partial.count
        self._total += partial.total_weight

    def result(self) -> Aggregate:
        if self._count == 0:
            raise AggregationError("no update was added")
        delta = self._layout.unflatten(self._sum.total() / float(self._total))
        return Aggregate(delta=delta, count=self._count, total_weight=float(self._total))


def apply_delta(weights: Weights, delta: Weights) -> Weights:
    """The next global model: ``weights + delta``, float32, new arrays.

    Raises:
        AggregationError: if the new model would not be finite.
    """
    with np.errstate(over="ignore"):
        new = {name: (w + delta[name]).astype(np.float32) for name, w in weights.items()}
    if not all(np.isfinite(a).all() for a in new.values()):
        raise AggregationError("the new model would not be finite: an update is out of range")
    return new
