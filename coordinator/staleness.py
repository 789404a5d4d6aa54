"""FedBuff's buffer: the staleness weights and the exact weighted sum of buffered deltas.

Pure. :mod:`coordinator.buffered` adds each accepted update with its weight
s(tau) = (1 + tau) ** -a, tau the versions its base lags the current one, and
applies ``sum(s_i * delta_i) / K`` (Nguyen et al., AISTATS 2022, Algorithm 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from coordinator.aggregate import Layout
from coordinator.checkpoint import Buffered
from coordinator.config import RoundConfig
from coordinator.exactsum import ExactSum
from protocol import Weights

#: ExactSum takes weights in [1, 2**53]: staleness weights in (0, 1] are scaled by this
#: power of two, which the mean divides out again exactly.
_SCALE = float(2**30)


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """What the buffered mode adds to a :class:`~coordinator.config.RoundConfig`."""

    #: updates per server step
    k: int = 10
    #: versions an update's base may lag the current one; more is rejected as ``stale``
    max_staleness: int = 5
    #: agents with work outstanding at once (None: every eligible agent online)
    concurrency: int | None = None
    #: ``sqrt`` (1/sqrt(1+tau)), ``const`` (1), or ``poly:A`` ((1+tau)**-A)
    staleness: str = "sqrt"

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_staleness < 0:
            raise ValueError("buffer k must be >= 1 and max staleness >= 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        staleness_weight(self.staleness, self.max_staleness)  # refuses a bad spec now


def _exponent(spec: str) -> float:
    if spec == "sqrt":
        return 0.5
    if spec == "const":
        return 0.0
    match = re.fullmatch(r"poly:([0-9]+(?:\.[0-9]+)?)", spec)
    if match is None:
        raise ValueError(f"staleness {spec!r}: want sqrt, const or poly:A")
    return float(match.group(1))


def staleness_weight(spec: str, tau: int) -> float:
    """s(tau) = (1 + tau) ** -a for the spec's exponent a; 1 for a fresh update."""
    weight = float((1.0 + tau) ** -_exponent(spec))
    if not 2**-24 <= weight <= 1.0 or not math.isfinite(weight):
        raise ValueError(f"staleness weight {weight} at tau={tau} is out of range")
    return weight


class StalenessSum:
    """``sum(s_i * delta_i) / K`` over the buffered updates, exact for every arrival order."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        self._sum = ExactSum(layout.size)

    def add(self, entry: Buffered) -> None:
        self._layout.check_shapes(entry.delta)
        parts = [entry.delta[name] for name in self._layout.slices]
        self._sum.add_parts(parts, entry.weight * _SCALE)

    def mean(self, k: int) -> Weights:
        return self._layout.unflatten(self._sum.total() / (_SCALE * k))




def unsupported_in_buffered(config: RoundConfig, buffer: BufferConfig) -> BufferConfig:
    """``buffer``, if ``config`` asks nothing the buffered mode cannot do yet.

    Its server step is the exact staleness-weighted mean; settings that change the
    aggregate are refused, not ignored, so nobody believes a run was robust or private.

    Raises:
        ValueError: naming each unsupported setting.
    """
    unsupported = [
        name
        for name, asked in (
            ("DP-FedAvg (--dp-noise)", config.dp_noise is not None),
            (f"the {config.aggregator} aggregator", config.aggregator != "fedavg"),
            ("--clip-norm", config.clip_norm is not None),
            ("secure aggregation (--secagg)", config.secagg is not None),
            ("a hashed cohort (--cohort-by hash: each version names its cohort)",
             config.cohort_by == "hash"),
            ("sampling (--sample-fraction/--sample-count; use --concurrency)",
             config.sample_fraction is not None or config.sample_count is not None),
            ("delta-coded models (--downlink-delta)", config.downlink_delta is not None),
            ("--over-select/--carry-late (synchronous only)",
             config.over_select is not None or config.carry_late > 0),
        )
        if asked
    ]
    if unsupported:
        raise ValueError(f"--mode fedbuff does not support {', '.join(unsupported)} yet")
    return buffer
