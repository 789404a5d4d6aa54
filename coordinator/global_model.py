"""The global model between rounds and what moves it: the server optimiser and the DP ledger.

Pure. The round machine asks it for the next model from an aggregated delta,
commits that model when the round is done, and reads from it what a checkpoint
keeps, so resuming restores exactly this state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from coordinator.aggregate import Aggregator, apply_delta
from coordinator.checkpoint import BroadcastState, Checkpoint
from coordinator.config import RoundConfig
from coordinator.optimisers import OptState, parse_server_opt
from coordinator.privacy import NoisySum, PrivacyLedger
from coordinator.robust import NormClip
from protocol import RoundMetrics, Weights
from protocol.compress import Shapes


class GlobalModel:
    """The weights after the last completed round, the optimiser's moments, the DP rounds."""

    def __init__(
        self, config: RoundConfig, weights: Weights, resume: Checkpoint | None = None
    ) -> None:
        """Start from ``weights``, or from ``resume``'s model and state.

        Raises:
            ValueError: if ``resume`` is another job's or task's, or holds another server
                optimiser's moments, which cannot be continued (rather than silently reset).
        """
        self._config = config
        self._server_opt = config.server_opt_spec
        self.weights = weights
        self._shapes = {name: tuple(a.shape) for name, a in weights.items()}
        self.opt_state = OptState()
        dp_rounds: tuple[tuple[float, float], ...] = ()
        if resume is not None:
            if resume.job != config.job or resume.task != config.task:
                raise ValueError(
                    f"checkpoint is for job {resume.job!r} task {resume.task!r}, "
                    f"not job {config.job!r} task {config.task!r}"
                )
            self.weights = resume.weights
            self.opt_state = self._resumed_opt_state(resume)
            dp_rounds = resume.dp_rounds
        self._ledger = (
            PrivacyLedger(config.dp_delta, dp_rounds) if config.dp_noise is not None else None
        )
        self.dp_rounds = dp_rounds

    @property
    def size(self) -> int:
        """Coordinates in the model: what a partial aggregate's sum must cover."""
        return sum(math.prod(shape) for shape in self._shapes.values())

    def aggregator(self, round_no: int, cohort: int) -> Aggregator:
        """A fresh aggregator for round ``round_no`` asking ``cohort`` agents."""
        return round_aggregator(self._config, self._shapes, round_no, cohort)

    def step(self, delta: Weights) -> tuple[Weights, OptState]:
        """The next model and optimiser state from a round's aggregated ``delta``; not
        committed until :meth:`commit` (a round can still fail to close)."""
        change, opt_state = self._server_opt.step(self.opt_state, delta)
        return apply_delta(self.weights, change), opt_state

    def commit(self, weights: Weights, opt_state: OptState) -> None:
        self.weights, self.opt_state = weights, opt_state

    def record_privacy(self, sampling_rate: float) -> float | None:
        """Account one DP round at this sampling rate; the run's epsilon so far (None: no DP)."""
        if self._ledger is None or self._config.dp_noise is None:
            return None
        epsilon = self._ledger.record(sampling_rate, self._config.dp_noise)
        self.dp_rounds = tuple(self._ledger.rounds)
        return epsilon

    def checkpoint(
        self,
        *,
        run: str,
        completed: int,
        history: tuple[RoundMetrics, ...],
        rejected: Mapping[str, int],
        broadcast: BroadcastState | None = None,
    ) -> Checkpoint:
        """A checkpoint of this model after ``completed`` rounds of ``run``."""
        opt, cfg = self.opt_state, self._config
        return Checkpoint(
            job=cfg.job,
            run=run,
            task=cfg.task,
            round=completed,
            weights=self.weights,
            history=history,
            rejected=dict(rejected),
            opt_moments={k: v for k, v in (("m", opt.m), ("v", opt.v)) if v},
            server_opt=cfg.server_opt,
            server_steps=opt.step,
            dp_rounds=self.dp_rounds,
            broadcast=broadcast,
        )

    def _resumed_opt_state(self, resume: Checkpoint) -> OptState:
        moments = resume.opt_moments
        if moments and parse_server_opt(resume.server_opt) != self._server_opt:
            raise ValueError(
                f"checkpoint holds the state of server optimiser {resume.server_opt!r}, "
                f"not {self._config.server_opt!r}; resume with the same --server-opt"
            )
        return OptState(
            resume.server_steps, dict(moments.get("m", {})), dict(moments.get("v", {}))
        )


def round_aggregator(
    config: RoundConfig, shapes: Shapes, round_no: int, cohort: int
) -> Aggregator:
    """The configured aggregator, or DP-FedAvg's clipped, noised fixed-denominator sum: what
    the coordinator aggregates a round with, and what a site aggregator sums its share with."""
    if config.dp_noise is None or config.dp_clip is None:
        aggregator = config.aggregator_spec.build(shapes)
        return aggregator if config.clip_norm is None else NormClip(aggregator, config.clip_norm)
    noisy = NoisySum(shapes, clip=config.dp_clip, noise_multiplier=config.dp_noise,
                     denominator=max(cohort, 1), seed=[config.dp_seed, round_no])
    return NormClip(noisy, config.dp_clip)
