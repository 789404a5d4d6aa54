"""How a run is configured: one frozen value the round machine is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from coordinator.aggregate import AGGREGATORS
from protocol import TrainPlan, check_codec, check_id
from protocol.chunks import MIN_MAX_PAYLOAD
from protocol.compress import DOWNLINKS

ShortRoundPolicy = Literal["retry", "stop"]
Downlink = Literal["fp32", "fp16"]


@dataclass(frozen=True, slots=True)
class RoundConfig:
    """Run parameters. Durations are seconds; ``quorum=None`` means every agent asked."""

    job: str
    task: str
    rounds: int
    plan: TrainPlan = field(default_factory=TrainPlan)
    codec: str = "none"
    #: the global model's wire dtype; the coordinator's own copy stays float32
    downlink: Downlink = "fp32"
    aggregator: str = "fedavg"
    #: close the round as soon as this many updates are accepted
    quorum: int | None = None
    #: at the deadline, close with this many accepted updates, else apply ``on_short_round``
    min_replies: int = 1
    deadline_s: float = 60.0
    #: agents that must be online before round 1 is announced
    min_agents: int = 1
    on_short_round: ShortRoundPolicy = "retry"
    max_retries: int = 3
    #: each retry's deadline is the previous one times this
    retry_backoff: float = 1.5
    target_accuracy: float | None = None
    evaluate: bool = True
    max_update_bytes: int = 64 * 1024 * 1024
    #: the broker's payload cap; larger models and updates travel as chunks (0: no cap)
    max_payload: int = 0
    #: memory for partially received chunked updates, all agents together
    max_reassembly_bytes: int = 256 * 1024 * 1024
    #: if set, only these agent ids may take part (for provisioned fleets)
    allowed_agents: frozenset[str] | None = None

    def __post_init__(self) -> None:
        check_id(self.job, "job")
        check_codec(self.codec)
        if self.downlink not in DOWNLINKS:
            raise ValueError(f"downlink must be one of {DOWNLINKS}, got {self.downlink!r}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {self.aggregator!r}")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.quorum is not None and self.quorum < 1:
            raise ValueError("quorum must be >= 1")
        if self.min_replies < 1:
            raise ValueError("min_replies must be >= 1")
        if self.quorum is not None and self.min_replies > self.quorum:
            raise ValueError(f"min_replies ({self.min_replies}) > quorum ({self.quorum})")
        if self.deadline_s <= 0:
            raise ValueError("deadline_s must be > 0")
        if self.min_agents < 1:
            raise ValueError("min_agents must be >= 1")
        if self.on_short_round not in ("retry", "stop"):
            raise ValueError("on_short_round must be 'retry' or 'stop'")
        if self.max_payload and self.max_payload < MIN_MAX_PAYLOAD:
            raise ValueError(f"max_payload must be 0 (no cap) or >= {MIN_MAX_PAYLOAD} bytes")
        if self.max_retries < 0 or self.retry_backoff < 1.0:
            raise ValueError("max_retries must be >= 0 and retry_backoff >= 1")
