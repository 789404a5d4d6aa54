"""How a run is configured: one frozen value the round machine is built from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from coordinator.strategy import parse_aggregator
from protocol import TrainPlan, check_codec, check_id
from protocol.chunks import MIN_MAX_PAYLOAD
from protocol.compress import DOWNLINKS
from protocol.signing import SigningKey, VerifyKey

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
    #: an aggregator spec (coordinator/strategy.py), e.g. fedavg, median, trimmed:0.2, krum:2
    aggregator: str = "fedavg"
    #: if set, each update's delta is scaled down to this L2 norm before aggregation
    clip_norm: float | None = None
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
    #: signs every model announcement (docs/SECURITY.md); None: models go out unsigned
    signing_key: SigningKey | None = None
    #: the provisioned agents' update keys. When set, every update must be signed by its
    #: topic's agent with its key, and only these agents take part (``allowed_agents``
    #: defaults to them). None: updates are not verified.
    agent_keys: Mapping[str, VerifyKey] | None = None

    def __post_init__(self) -> None:
        check_id(self.job, "job")
        check_codec(self.codec)
        if self.downlink not in DOWNLINKS:
            raise ValueError(f"downlink must be one of {DOWNLINKS}, got {self.downlink!r}")
        self._check_aggregator()
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
        if self.agent_keys is not None:
            self._check_agent_keys(self.agent_keys)

    def _check_aggregator(self) -> None:
        need = parse_aggregator(self.aggregator).min_updates
        if self.quorum is not None and self.quorum < need:
            raise ValueError(
                f"aggregator {self.aggregator} needs at least {need} updates a round; "
                f"quorum {self.quorum} would close rounds it must refuse"
            )
        if self.clip_norm is not None and not 0 < self.clip_norm < float("inf"):
            raise ValueError(f"clip_norm must be a positive number, got {self.clip_norm}")

    def _check_agent_keys(self, keys: Mapping[str, VerifyKey]) -> None:
        for agent in keys:
            check_id(agent, "agent")
        if self.allowed_agents is None:  # a frozen value: set the derived default once
            object.__setattr__(self, "allowed_agents", frozenset(keys))
        elif not self.allowed_agents <= keys.keys():
            missing = sorted(self.allowed_agents - keys.keys())
            raise ValueError(f"allowed agents without an update key: {missing}")
