"""Client-level differential privacy: DP-FedAvg's noisy fixed-denominator mean, and its ledger.

References:
    McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent
    Language Models", ICLR 2018 (DP-FedAvg): clip each user's update to L2 norm
    ``S``, average with the fixed denominator ``qW`` (the expected cohort), add
    Gaussian noise of std ``z S / (qW)``; account with the moments accountant.
    Mironov, "Rényi Differential Privacy", CSF 2017, and Google's ``dp-accounting``
    library, whose RDP accountant turns each round's ``PoissonSampledDpEvent(q,
    GaussianDpEvent(z))`` into (epsilon, delta). fedmq never accounts by hand.

Choices, documented in docs/STRATEGIES.md:
- every update weighs 1 (the paper's uniform ``w_k``): sample counts are the
  client's own claim and would change its sensitivity;
- the denominator is the cohort size asked when the round opened, so an agent
  that drops out shrinks the step instead of raising the others' weight;
- the cohort is drawn without replacement at a fixed size and accounted as
  Poisson sampling at ``q = cohort / eligible agents online``, the usual
  approximation (TensorFlow Federated makes the same one);
- the noise comes from ``numpy.random.default_rng([seed, round])``: reproducible,
  hence private only while the seed is secret.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from coordinator.aggregate import Aggregate, AggregationError, Layout, PartialSum
from coordinator.exactsum import ExactSum
from protocol import Weights
from protocol.compress import Shapes


class NoisySum:
    """``sum(delta_i) / denominator + N(0, (z C / denominator)^2)`` per coordinate.

    Wrap it in :class:`coordinator.robust.NormClip` with ``C``: the noise is
    calibrated to each delta's norm being at most ``C``. Streaming, O(model).
    """

    needs_all = False

    def __init__(
        self, shapes: Shapes, *, clip: float, noise_multiplier: float, denominator: int,
        seed: Sequence[int],
    ) -> None:
        if denominator < 1 or noise_multiplier < 0 or not clip > 0:
            raise ValueError("DP sum needs denominator >= 1, z >= 0 and C > 0")
        self._layout = Layout(shapes)
        self._sum = ExactSum(self._layout.size, scratch=self._layout.largest)
        self._count = 0
        self.denominator = denominator
        #: the noise's standard deviation per coordinate: z C / denominator
        self.noise_std = noise_multiplier * clip / denominator
        self._seed = list(seed)

    def add(self, delta: Weights, weight: float) -> None:
        """Add ``delta`` with weight 1; ``weight`` must be positive but is otherwise unused."""
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight}")
        self._layout.check(delta)
        for name, where in self._layout.slices.items():
            self._sum.add(delta[name], 1.0, where.start)
        self._count += 1

    def weight(self, samples: int) -> int:
        return 1  # DP-FedAvg weighs every clipped delta alike

    def partial(self) -> PartialSum:
        """The clipped deltas' exact sum: shares merge before the noise, added once."""
        return PartialSum(self._sum.state(), self._count, self._count)

    def merge(self, partial: PartialSum) -> None:
        self._sum.merge(partial.total)
        self._count += partial.count

    def result(self) -> Aggregate:
        """The noisy mean; the same bits however often it is asked for (the RNG is reseeded)."""
        if self._count == 0:
            raise AggregationError("no update was added")
        flat = self._sum.total() / self.denominator
        if self.noise_std > 0:
            rng = np.random.default_rng(self._seed)
            flat += rng.normal(0.0, self.noise_std, self._layout.size)
        return Aggregate(self._layout.unflatten(flat), self._count, float(self._count))


def _not_convergence_notice(record: logging.LogRecord) -> bool:
    """dp-accounting logs a warning for every fractional RDP order whose series does not
    converge, then leaves that order out; epsilon stays valid (the minimum over the other
    orders), so those lines, several per round, are dropped from the coordinator's log."""
    return "failed to converge" not in record.getMessage()


class PrivacyLedger:
    """(epsilon, delta) of a run so far, composed round by round in dp-accounting's RDP
    accountant. ``rounds`` replays the (q, z) of rounds already run (from a checkpoint)."""

    def __init__(self, delta: float, rounds: Sequence[tuple[float, float]] = ()) -> None:
        from dp_accounting.rdp import RdpAccountant

        absl = logging.getLogger("absl")
        if _not_convergence_notice not in absl.filters:
            absl.addFilter(_not_convergence_notice)
        self.delta = delta
        self._accountant = RdpAccountant()
        self.rounds: list[tuple[float, float]] = []
        for q, z in rounds:
            self.record(q, z)

    def record(self, q: float, z: float) -> float | None:
        """Compose one round sampled at rate ``q`` with noise multiplier ``z``; the run's
        epsilon after it, or None when it is infinite (``z = 0``: no privacy)."""
        import dp_accounting

        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        self._accountant.compose(event)
        self.rounds.append((q, z))
        epsilon = float(self._accountant.get_epsilon(self.delta))
        return epsilon if math.isfinite(epsilon) else None
