"""What the agent needs from a local trainer, without importing any framework.

The agent core hands a trainer the round's global weights and plan and gets
back new local weights; it never learns whether torch or numpy did the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from protocol import TrainPlan, Weights


@dataclass(frozen=True, slots=True)
class TrainResult:
    """Local weights after training, how many samples shaped them, and train metrics."""

    weights: Weights
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer(Protocol):
    """Trains one agent's model on that agent's own data.

    ``train`` must be deterministic for a given (weights, plan, round): agent
    ``index`` shuffles round ``r`` with ``numpy.random.default_rng([plan.seed, r, index])``.
    """

    #: a short name announced in presence, e.g. ``"torch"`` or ``"numpy"``
    name: str
    #: how many local samples this trainer holds
    samples: int

    def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult: ...

    def evaluate(self, weights: Weights) -> dict[str, float]: ...
