"""Robust aggregators: coordinate-wise median, trimmed mean, (Multi-)Krum, and norm clipping.

References:
    Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018: the coordinate-wise median and
    the coordinate-wise beta-trimmed mean.
    Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017: Krum (needs n >= 2f + 3)
    and Multi-Krum.
    Sun, Kairouz, Suresh and McMahan, "Can You Really Backdoor Federated Learning?",
    arXiv:1911.07963, 2019: clipping each update's L2 norm on the server.

Invariants:
- Every robust aggregator keeps each delta it is given (``needs_all``: memory is
  ``n x model`` float32) and ignores sample counts, which a hostile agent would
  simply inflate.
- A result is a function of the *set* of updates (order statistics, sorted sums,
  an exact sum), never of the order they arrived in.
- Below its requirement an aggregator raises :class:`AggregationError` naming
  it; it never quietly degrades to a plain mean. docs/ROBUSTNESS.md says what
  each tolerates and costs.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from coordinator.aggregate import (
    Aggregate,
    AggregationError,
    Aggregator,
    Layout,
    Mergeable,
    PartialSum,
)
from coordinator.exactsum import ExactSum
from protocol import Weights
from protocol.compress import Shapes

#: coordinates sorted at a time: the temporaries of a median stay n x 64 Ki floats
_BLOCK = 1 << 16


def trimmed_count(trim: float, n: int) -> int:
    """Updates cut from each end: ``trim`` itself if it is a count (>= 1), else
    ``floor(trim * n)``, computed on the decimal fraction so 0.29 * 100 is 29."""
    if trim >= 1:
        return int(trim)
    return math.floor(Fraction(str(trim)) * n)


def trimmed_min_updates(trim: float) -> int:
    """The fewest updates with at least one cut from each end and one left."""
    if trim >= 1:
        return 2 * int(trim) + 1
    return max(3, math.ceil(1 / Fraction(str(trim))))


def krum_min_updates(f: int, m: int = 1) -> int:
    """Krum tolerating ``f`` needs ``n >= 2f + 3``; Multi-Krum's ``m`` also ``m <= n - f``."""
    return max(2 * f + 3, m + f)


class _Buffered(ABC):
    """Keeps every delta as one float32 row of an ``n x model`` matrix."""

    needs_all = True

    def __init__(self, shapes: Shapes) -> None:
        self._layout = Layout(shapes)
        self._rows = np.empty((0, self._layout.size), np.float32)
        self._count = 0

    def add(self, delta: Weights, weight: float) -> None:
        """Keep a copy of ``delta``; ``weight`` must be positive but is otherwise unused.

        Raises:
            ValueError: for a bad weight, or a missing, misshapen or non-finite tensor.
        """
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        self._layout.check(delta)
        if self._count == len(self._rows):  # grow by doubling: amortised O(1) copies
            grown = np.empty((max(4, 2 * self._count), self._layout.size), np.float32)
            grown[: self._count] = self._rows[: self._count]
            self._rows = grown
        row = self._rows[self._count]
        for name, where in self._layout.slices.items():
            row[where] = delta[name].reshape(-1)
        self._count += 1

    def result(self) -> Aggregate:
        need = self.min_updates
        if self._count < need:
            raise AggregationError(self._shortfall(need))
        flat = self._combine(self._rows[: self._count])
        delta = self._layout.unflatten(flat)
        return Aggregate(delta=delta, count=self._count, total_weight=float(self._count))

    @property
    def min_updates(self) -> int:
        return 1

    def _shortfall(self, need: int) -> str:
        return f"needs at least {need} updates, has {self._count}"

    @abstractmethod
    def _combine(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """The flat float64 aggregate of ``rows`` (n x model), ``n >= min_updates``."""


class Median(_Buffered):
    """Coordinate-wise median (Yin et al.): tolerates fewer than half the updates hostile."""

    def _combine(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        n = len(rows)
        mid = n // 2
        out = np.empty(rows.shape[1], np.float64)
        for start in range(0, rows.shape[1], _BLOCK):
            block = rows[:, start : start + _BLOCK]
            if n % 2:
                part = np.partition(block, mid, axis=0)  # (n, b) float32
                out[start : start + _BLOCK] = part[mid]
            else:
                part = np.partition(block, (mid - 1, mid), axis=0)
                # the two middle values meet in float64: float32 could overflow
                out[start : start + _BLOCK] = (part[mid - 1].astype(np.float64) + part[mid]) / 2
        return out


class TrimmedMean(_Buffered):
    """Coordinate-wise trimmed mean (Yin et al.): drop the ``k`` largest and ``k``
    smallest values of each coordinate, average the rest. ``trim`` is a fraction
    in (0, 0.5), ``k = floor(trim * n)``, or a count ``k >= 1``; it tolerates up to
    ``k`` hostile updates. Refused unless ``k >= 1`` and ``n > 2k``."""

    def __init__(self, shapes: Shapes, trim: float) -> None:
        if not (0 < trim < 0.5 or (trim >= 1 and trim == int(trim))):
            raise ValueError(f"trim must be a fraction in (0, 0.5) or a count >= 1, got {trim}")
        super().__init__(shapes)
        self.trim = trim

    @property
    def min_updates(self) -> int:
        return trimmed_min_updates(self.trim)

    def _shortfall(self, need: int) -> str:
        cut = trimmed_count(self.trim, self._count)
        label = f"trimmed:{self.trim:g}"
        return (
            f"{label} cuts {cut} of {self._count} updates from each end; "
            f"it needs at least {need} updates to cut one and keep one"
        )

    def _combine(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        n = len(rows)
        k = trimmed_count(self.trim, n)
        out = np.empty(rows.shape[1], np.float64)
        for start in range(0, rows.shape[1], _BLOCK):
            kept = np.sort(rows[:, start : start + _BLOCK], axis=0)[k : n - k]  # (n-2k, b)
            # summed in sorted order, so the arrival order cannot change a bit
            out[start : start + _BLOCK] = kept.sum(axis=0, dtype=np.float64) / (n - 2 * k)
        return out


class Krum(_Buffered):
    """Krum and Multi-Krum (Blanchard et al.) tolerating ``f`` hostile updates.

    Each update is scored by the summed squared L2 distances to its ``n - f - 2``
    nearest others; the ``m`` best-scored are averaged (``m = 1``: Krum). Needs
    ``n >= 2f + 3`` and ``m <= n - f``. Time O(n^2 x model).
    """

    def __init__(self, shapes: Shapes, f: int, m: int = 1) -> None:
        if f < 0 or m < 1:
            raise ValueError(f"krum needs f >= 0 and m >= 1, got f={f} m={m}")
        super().__init__(shapes)
        self.f, self.m = f, m

    @property
    def min_updates(self) -> int:
        return krum_min_updates(self.f, self.m)

    def _shortfall(self, need: int) -> str:
        label = f"krum:{self.f}" if self.m == 1 else f"multikrum:{self.f}:{self.m}"
        return f"{label} needs n >= max(2f+3, m+f) = {need} updates, has {self._count}"

    def scores(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Each row's Krum score (lower is more central)."""
        n = len(rows)
        dist = np.zeros((n, n), np.float64)
        for i in range(n):
            for j in range(i + 1, n):
                diff = np.subtract(rows[i], rows[j], dtype=np.float64)  # (d,) float64
                dist[i, j] = dist[j, i] = float(diff @ diff)
        nearest = n - self.f - 2
        # each row's distances to the others, ascending, summed in that order
        return np.array(
            [np.sort(np.delete(dist[i], i))[:nearest].sum() for i in range(n)], np.float64
        )

    def _combine(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        scores = self.scores(rows)
        # ties (identical rows, in practice) are broken by content, not arrival
        digests = [hashlib.sha256(r.tobytes()).digest() for r in rows]
        chosen = sorted(range(len(rows)), key=lambda i: (scores[i], digests[i]))[: self.m]
        total = ExactSum(rows.shape[1])
        for i in chosen:
            total.add(rows[i], 1.0)
        return total.total() / self.m


class NormClip:
    """Scales each delta down to L2 norm ``max_norm`` (whole model) before ``inner`` sees it.

    Bounds what any one update can move the model, whatever the aggregator; an
    honest update within the norm passes untouched.
    """

    def __init__(self, inner: Aggregator, max_norm: float) -> None:
        if not max_norm > 0 or not math.isfinite(max_norm):
            raise ValueError(f"clip norm must be a positive number, got {max_norm}")
        self.inner = inner
        self.needs_all = inner.needs_all
        self.max_norm = max_norm
        #: updates scaled down so far
        self.clipped = 0

    def add(self, delta: Weights, weight: float) -> None:
        norm = math.sqrt(
            sum(float(np.square(a, dtype=np.float64).sum()) for a in delta.values())
        )
        if norm > self.max_norm:  # NaN compares False: the inner aggregator refuses it
            scale = self.max_norm / norm
            delta = {n: (a.astype(np.float64) * scale).astype(np.float32) for n, a in delta.items()}
            self.inner.add(delta, weight)
            self.clipped += 1
            return
        self.inner.add(delta, weight)

    def weight(self, samples: int) -> int:
        return self._mergeable().weight(samples)

    def partial(self) -> PartialSum:
        """The inner sum's state: every delta in it was clipped on its way in."""
        return self._mergeable().partial()

    def merge(self, partial: PartialSum) -> None:
        """Merge a share whose deltas were clipped to the same norm where they were summed."""
        self._mergeable().merge(partial)

    def _mergeable(self) -> Mergeable:
        if not isinstance(self.inner, Mergeable):
            raise ValueError(f"{type(self.inner).__name__} cannot merge partial sums")
        return self.inner

    def result(self) -> Aggregate:
        return self.inner.result()
