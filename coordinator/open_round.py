"""What one open round has gathered so far: its cohort, its answers, its running sums.

A plain record the round machine (:mod:`coordinator.rounds`) owns and mutates;
no logic beyond adding an accepted update to its tallies and reporting them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.aggregate import Aggregator, Mergeable, PartialSum
from coordinator.optimisers import OptState
from coordinator.secagg import SecAggDone
from protocol import ClosedBy, Publish, RoundMetrics, Update, Weights
from protocol.partial import PartialAggregate

#: the agents' reported metrics a round averages (docs/PROTOCOL.md, update ``metrics``)
TRAIN_METRICS = ("loss", "accuracy")


def _finite(value: float | None) -> float | None:
    """A metric as published, or None: agents' reported losses (each finite) can still sum
    to inf, and a diverged model evaluates to inf or NaN, neither of which JSON can carry."""
    return value if value is not None and math.isfinite(value) else None


@dataclass(slots=True)
class OpenRound:
    """One round from its announcement to its close (retries included)."""

    number: int
    attempt: int
    opened_at: float
    deadline: float
    deadline_s: float
    #: the agents this round asked (every eligible agent online, or a drawn sample)
    cohort: frozenset[str]
    quorum: int
    aggregator: Aggregator
    #: the announcement as published (signed, chunked; model then delta), again on reconnect
    publishes: tuple[Publish, ...] = ()
    accepted: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)
    rejected: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0
    bytes_down: int = 0
    raw_bytes_down: int = 0
    #: (announcement, agent) pairs counted in the bytes down
    addressed: int = 0
    samples: int = 0
    #: per reported training metric (``loss``, ``accuracy``): the sample-weighted sum and
    #: the samples of the updates that reported it, so a silent agent counts as absent, not 0
    metric_sums: dict[str, float] = field(default_factory=dict)
    metric_samples: Counter[str] = field(default_factory=Counter)
    closed_by: ClosedBy | None = None
    new_weights: Weights | None = None
    #: the server optimiser's state once this round's model is committed
    new_opt_state: OptState | None = None
    #: the cohort size the round asked for (a retry tops the cohort up to it)
    cohort_target: int = 0
    #: every eligible agent online at one of the round's draws: q = cohort / pool for DP
    pool: set[str] = field(default_factory=set)
    #: SecAgg rounds: who dropped out of the summed session, by phase
    secagg_dropped: dict[str, set[str]] | None = None
    #: the aggregators (sites, ingest workers) whose partial aggregate was merged
    partials: set[str] = field(default_factory=set)

    @property
    def answered(self) -> set[str]:
        return self.accepted | self.declined

    @property
    def sampling_rate(self) -> float:
        """q for DP accounting: the cohort over every eligible agent seen at its draws."""
        return len(self.cohort) / max(len(self.pool), len(self.cohort), 1)

    def take_update(self, update: Update, delta: Weights) -> None:
        """Add an admitted update's ``delta`` to the aggregate; count its samples and its
        reported training metrics."""
        self.aggregator.add(delta, update.samples)
        self.tally(update)

    def tally(self, update: Update) -> None:
        """Count an accepted update's samples and reported training metrics."""
        self._count(update.agent, update.samples, update.metrics)

    def take_partial(self, partial: PartialAggregate, merger: Mergeable, size: int) -> None:
        """Merge an admitted partial aggregate of ``size`` bytes into ``merger`` (this
        round's aggregator) and count its contributors, declines and rejections."""
        merger.merge(PartialSum(partial.total, len(partial.contributors),
                                partial.total_weight))
        self.bytes_up += size
        self.partials.add(partial.aggregator)
        for c in partial.contributors:
            self._count(c.agent, c.samples, c.metrics)
        self.declined.update(partial.declined)
        self.rejected.update(r.reason.value for r in partial.rejected)

    def _count(self, agent: str, samples: int, metrics: Mapping[str, float]) -> None:
        self.accepted.add(agent)
        self.samples += samples
        for name in TRAIN_METRICS:
            if name in metrics:
                self.metric_sums[name] = self.metric_sums.get(name, 0.0) + metrics[name] * samples
                self.metric_samples[name] += samples

    def _train_mean(self, name: str) -> float | None:
        """The sample-weighted mean of ``name`` over the updates that reported it."""
        weight = self.metric_samples[name]
        return _finite(self.metric_sums[name] / weight) if weight else None

    def tally_secagg(self, done: SecAggDone) -> None:
        """The sum of the attempt's SecAgg session: its survivors are the accepted, their
        total weight the samples, and who dropped out of it where is recorded."""
        self.accepted, self.samples = set(done.survivors), done.result.samples
        self.secagg_dropped = {phase.value: set(agents) for phase, agents in done.dropped.items()}

    def metrics(
        self,
        *,
        job: str,
        run: str,
        evaluation: dict[str, float],
        raw_update_bytes: int,
        duration_s: float,
        at: float,
        epsilon: float | None,
    ) -> RoundMetrics:
        """The closed round's metrics document (``closed_by`` must be set)."""
        assert self.closed_by is not None
        return RoundMetrics(
            job=job,
            run=run,
            round=self.number,
            closed_by=self.closed_by,
            accepted=len(self.accepted),
            declined=len(self.declined),
            rejected=dict(self.rejected),
            samples=self.samples,
            duration_s=duration_s,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            raw_bytes_up=raw_update_bytes * len(self.accepted),
            accuracy=_finite(evaluation.get("accuracy")),
            loss=_finite(evaluation.get("loss")),
            # only over updates reporting it: SecAgg rounds report no metrics in clear
            train_loss=self._train_mean("loss"),
            train_accuracy=self._train_mean("accuracy"),
            at=at,
            epsilon=epsilon,
            raw_bytes_down=self.raw_bytes_down,
            addressed=self.addressed,
            secagg=None if self.secagg_dropped is None else {
                phase: tuple(sorted(agents)) for phase, agents in self.secagg_dropped.items()},
        )
