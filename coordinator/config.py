"""How a run is configured: one frozen value the round machine is built from."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from coordinator.optimisers import ServerOptSpec, parse_server_opt
from coordinator.strategy import AggregatorSpec, parse_aggregator
from protocol import TrainPlan, check_codec, check_id
from protocol.chunks import MIN_MAX_PAYLOAD
from protocol.cohort_hash import CohortHash, below_for
from protocol.compress import DOWNLINKS
from protocol.fields import MAX_JSON_BYTES
from protocol.keys import SigningKey, VerifyKey
from protocol.secagg.fixedpoint import RingSpec
from protocol.secagg.graph import effective_degree
from protocol.signing import ENVELOPE_OVERHEAD

ShortRoundPolicy = Literal["retry", "stop"]
Downlink = Literal["fp32", "fp16"]
SamplePolicy = Literal["uniform", "by-samples"]
SAMPLE_POLICIES = ("uniform", "by-samples")
CohortBy = Literal["name", "hash"]
COHORT_BY = ("name", "hash")
#: the largest update (as sent) a coordinator accepts unless told otherwise
DEFAULT_MAX_UPDATE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SecAggPolicy:
    """How the coordinator runs every SecAgg session (``--secagg-*``)."""

    #: the ring Z_(2^ring_bits): 32 keeps a masked input the size of a float32 update
    ring_bits: int = 32
    #: every delta coordinate is clipped to [-clip, clip] (the declared range)
    clip: float = 1.0
    #: an agent's weight is capped here when the cohort's presence gives no sample counts
    weight_max: int = 65_536
    #: SecAgg+ graph degree k (even); None: the complete graph (SecAgg)
    degree: int | None = None
    #: t = floor(threshold * (k + 1)) + 1 shares of the k + 1 recover a secret
    threshold: float = 0.5
    keys_s: float = 10.0
    shares_s: float = 10.0
    unmask_s: float = 10.0

    def __post_init__(self) -> None:
        if self.degree is not None:
            effective_degree(self.degree + 2, self.degree)  # even and >= 2
        if not 0 <= self.threshold < 1:
            raise ValueError(f"secagg threshold must be in [0, 1), got {self.threshold}")
        if min(self.keys_s, self.shares_s, self.unmask_s) <= 0:
            raise ValueError("secagg phase timeouts must be > 0")
        RingSpec(self.ring_bits, 0, self.clip, 1, 1)  # a ring size fedmq offers, a sane clip

    def shares_needed(self, degree: int) -> int:
        """t of the k + 1 shares: more than ``threshold`` of the neighbourhood, at least 2."""
        return min(degree + 1, max(2, math.floor(self.threshold * (degree + 1)) + 1))



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
    #: send each new global model as a delta from the last with this update codec
    #: (docs/PROTOCOL.md §15), e.g. qsgd:2+zstd:9; None: the whole model every round
    downlink_delta: str | None = None
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
    #: stop once test accuracy has not beaten its best by more than ``min_delta`` for
    #: this many rounds in a row (None: never)
    patience: int | None = None
    min_delta: float = 0.0
    #: how the aggregated delta moves the model (coordinator/optimisers.py), e.g. fedadam
    server_opt: str = "fedavg"
    #: ask this fraction (0, 1] of the eligible agents online each round (None: all) ...
    sample_fraction: float | None = None
    #: ... or this many; the cohort never drops below what quorum and min_replies need
    sample_count: int | None = None
    #: over-selection: ask ceil(over_select * quorum) agents, close at quorum; the others
    #: are late (coordinator/stragglers.py). None: ask every eligible agent online
    over_select: float | None = None
    #: carry updates up to this many rounds late into the next round to close, weighted by
    #: ``late_staleness`` (a coordinator/staleness.py spec); 0: a late update is ``stale``
    carry_late: int = 0
    late_staleness: str = "sqrt"
    #: uniform, or by-samples: weighted by the sample counts agents advertise in presence
    sample_policy: SamplePolicy = "uniform"
    #: how a sampled cohort is announced: by name (a list of ids, exactly the drawn size),
    #: or by hash (one threshold, docs/PROTOCOL.md §17: each agent in with probability F)
    cohort_by: CohortBy = "name"
    #: only agents whose presence names one of these device classes take part (None: any)
    device_classes: frozenset[str] | None = None
    #: cohorts are drawn with numpy.random.default_rng([sample_seed, round, attempt])
    sample_seed: int = 0
    #: DP-FedAvg (coordinator/privacy.py): the noise multiplier z (None: no DP) ...
    dp_noise: float | None = None
    #: ... the L2 clip norm C of each update, and the delta of the reported (epsilon, delta)
    dp_clip: float | None = None
    dp_delta: float = 1e-5
    #: the noise is drawn with numpy.random.default_rng([dp_seed, round]): keep it secret
    dp_seed: int = 0
    evaluate: bool = True
    max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES
    #: an update claiming more samples is refused: without keys anyone can send one, and
    #: its FedAvg weight would swamp every honest update (docs/SECURITY.md)
    max_samples: int = 1_000_000
    #: the broker's payload cap; larger models and updates travel as chunks (0: no cap)
    max_payload: int = 0
    #: memory for partially received chunked updates, all agents together
    max_reassembly_bytes: int = 256 * 1024 * 1024
    #: messages received but not yet validated, all together: what arrives beyond it is
    #: dropped (and counted) by the adapter, so a flood cannot exhaust the coordinator
    max_inbox_bytes: int = 256 * 1024 * 1024
    #: the status goes out on every phase change, and otherwise at most this often
    status_interval_s: float = 0.5
    #: if set, only these agent ids may take part (for provisioned fleets)
    allowed_agents: frozenset[str] | None = None
    #: signs every model announcement (docs/SECURITY.md); None: models go out unsigned
    signing_key: SigningKey | None = None
    #: the provisioned agents' update keys. When set, every update must be signed by its
    #: topic's agent with its key, and only these agents take part (``allowed_agents``
    #: defaults to them). None: updates are not verified.
    agent_keys: Mapping[str, VerifyKey] | None = None
    #: site aggregators and ingest workers whose partial aggregates count (None: any),
    #: and their public keys in the secure profile (docs/SCALE.md)
    allowed_aggregators: frozenset[str] | None = None
    aggregator_keys: Mapping[str, VerifyKey] | None = None
    max_partial_bytes: int = 512 * 1024 * 1024
    #: secure aggregation (docs/PROTOCOL.md §14): the coordinator learns only the sum
    secagg: SecAggPolicy | None = None
    #: ``aggregator`` and ``server_opt`` parsed once, here, so nothing parses them again
    aggregator_spec: AggregatorSpec = field(init=False, repr=False, compare=False)
    server_opt_spec: ServerOptSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # a frozen value: set the parsed specs once (parsing raises ValueError for bad ones)
        object.__setattr__(self, "aggregator_spec", parse_aggregator(self.aggregator))
        object.__setattr__(self, "server_opt_spec", parse_server_opt(self.server_opt))
        check_id(self.job, "job")
        check_codec(self.codec)
        if self.downlink_delta is not None:
            check_codec(self.downlink_delta)
        if self.downlink not in DOWNLINKS:
            raise ValueError(f"downlink must be one of {DOWNLINKS}, got {self.downlink!r}")
        self._check_aggregator()
        self._check_sampling()
        self._check_privacy()
        self._check_patience()
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
        self._check_limits()
        if self.max_retries < 0 or self.retry_backoff < 1.0:
            raise ValueError("max_retries must be >= 0 and retry_backoff >= 1")
        if self.agent_keys is not None:
            self._check_agent_keys(self.agent_keys)
        if self.aggregator_keys is not None and self.allowed_aggregators is None:
            object.__setattr__(self, "allowed_aggregators", frozenset(self.aggregator_keys))
        self._check_secagg()

    def _check_secagg(self) -> None:
        """Refuse what needs to see individual updates: SecAgg only ever shows their sum."""
        if self.secagg is None:
            return
        why = "--secagg shows the coordinator only the sum of the updates, so"
        if self.aggregator != "fedavg" or self.clip_norm is not None:
            raise ValueError(f"{why} robust aggregators and server-side clipping, which need "
                             f"each update, cannot run with it (got --aggregator "
                             f"{self.aggregator}); bound updates with --secagg-clip instead")
        if self.codec != "none":
            raise ValueError(f"{why} update codecs ({self.codec}: top-k, quantisers) do not "
                             "apply: agents send masked fixed-point vectors; use --codec none")
        if self.dp_noise is not None:
            raise ValueError(f"{why} DP-FedAvg's per-update clipping and server-side noise "
                             "cannot be applied; run DP without --secagg")

    def _check_limits(self) -> None:
        if self.max_payload and self.max_payload < MIN_MAX_PAYLOAD:
            raise ValueError(f"max_payload must be 0 (no cap) or >= {MIN_MAX_PAYLOAD} bytes")
        if not 0 <= self.status_interval_s < float("inf"):
            raise ValueError(f"status_interval_s must be >= 0, got {self.status_interval_s}")
        if self.max_inbox_bytes < self.max_message_bytes:
            raise ValueError(f"max_inbox_bytes ({self.max_inbox_bytes}) cannot hold one message "
                             f"of {self.max_message_bytes} bytes")
        if not 1 <= self.max_samples <= 2**40:
            raise ValueError(f"max_samples must be in 1..2**40, got {self.max_samples}")

    def _check_aggregator(self) -> None:
        need = self.aggregator_spec.min_updates
        if self.quorum is not None and self.quorum < need:
            raise ValueError(
                f"aggregator {self.aggregator} needs at least {need} updates a round; "
                f"quorum {self.quorum} would close rounds it must refuse"
            )
        if self.clip_norm is not None and not 0 < self.clip_norm < float("inf"):
            raise ValueError(f"clip_norm must be a positive number, got {self.clip_norm}")

    @property
    def max_message_bytes(self) -> int:
        """The largest payload the coordinator takes on one topic: a whole update (its
        signed envelope included), or one chunk frame when updates travel in chunks; never
        less than a (signed) presence may be. Larger ones are refused unread."""
        one = min(self.max_update_bytes, self.max_payload or self.max_update_bytes)
        return max(one, MAX_JSON_BYTES + ENVELOPE_OVERHEAD)

    @property
    def names_cohort(self) -> bool:
        """True if rounds ask a chosen cohort (announced by name), not every agent online."""
        return self.cohort_by == "name" and (
            self.sample_fraction is not None or self.sample_count is not None
            or self.device_classes is not None or self.over_select is not None
        )

    @property
    def cohort_hash(self) -> CohortHash | None:
        """The threshold every round's announcement carries when cohorts are hashed."""
        if self.cohort_by != "hash" or self.sample_fraction is None:
            return None
        return CohortHash(below_for(self.sample_fraction))

    @property
    def cohort_floor(self) -> int:
        """The smallest cohort a round can close with: quorum, min_replies, the aggregator's."""
        return max(self.quorum or 1, self.min_replies, self.aggregator_spec.min_updates)

    def _check_sampling(self) -> None:
        fraction, count = self.sample_fraction, self.sample_count
        if fraction is not None and count is not None:
            raise ValueError("give a sample fraction or a sample count, not both")
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"sample fraction must be in (0, 1], got {fraction}")
        if count is not None and count < self.cohort_floor:
            raise ValueError(
                f"a cohort of {count} cannot meet quorum/min_replies/the aggregator's minimum "
                f"({self.cohort_floor}); ask at least that many"
            )
        if self.over_select is not None and (
            self.quorum is None or not 1 <= self.over_select <= 10 or fraction or count
        ):
            raise ValueError("over-selection needs a quorum, a factor in [1, 10], and no "
                             "sample fraction or count (it sets the cohort's size)")
        if not 0 <= self.carry_late <= 100:
            raise ValueError(f"carry_late must be in 0..100 rounds, got {self.carry_late}")
        if self.sample_policy not in SAMPLE_POLICIES:
            raise ValueError(f"sample policy must be one of {SAMPLE_POLICIES}")
        self._check_cohort_by()
        devices = self.device_classes
        if devices is not None and not (devices and all(0 < len(d) <= 64 for d in devices)):
            raise ValueError("device classes must be non-empty names of <= 64 chars")

    def _check_cohort_by(self) -> None:
        """A hashed cohort is what each agent can check alone: a fraction, nothing else."""
        if self.cohort_by not in COHORT_BY:
            raise ValueError(f"cohort_by must be one of {COHORT_BY}, got {self.cohort_by!r}")
        if self.cohort_by == "name":
            return
        unsupported = [name for name, asked in (
            ("--sample-count (a hashed cohort's size is binomial)", self.sample_count is not None),
            ("--sample-policy by-samples", self.sample_policy != "uniform"),
            ("--device-class", self.device_classes is not None),
            ("--over-select", self.over_select is not None),
            ("--secagg (it names its cohort)", self.secagg is not None),
        ) if asked]
        if unsupported:
            raise ValueError("--cohort-by hash cannot be combined with " + ", ".join(unsupported)
                             + ": a hashed cohort is one fraction each agent checks alone "
                             "(docs/PROTOCOL.md §17)")
        if self.sample_fraction is None:
            raise ValueError("--cohort-by hash needs --sample-fraction F (each agent's chance)")

    def _check_patience(self) -> None:
        if self.patience is not None and (self.patience < 1 or not self.evaluate):
            raise ValueError("patience must be >= 1 and needs server-side evaluation")
        if not 0 <= self.min_delta < 1:
            raise ValueError(f"min_delta must be in [0, 1), got {self.min_delta}")

    def _check_privacy(self) -> None:
        z, clip, delta = self.dp_noise, self.dp_clip, self.dp_delta
        if z is None:
            if clip is not None:
                raise ValueError("dp_clip needs dp_noise (for clipping alone use clip_norm)")
            return
        if clip is None or not 0 < clip < float("inf"):
            raise ValueError("DP needs dp_clip, the L2 clip norm C, a positive number")
        if not 0 <= z < float("inf"):
            raise ValueError(f"dp_noise (the noise multiplier z) must be >= 0, got {z}")
        if not 0 < delta < 1:
            raise ValueError(f"dp_delta must be in (0, 1), got {delta}")
        if self.aggregator != "fedavg" or self.clip_norm is not None:
            raise ValueError(
                "DP-FedAvg replaces the aggregator and its clipping: use it with the default "
                "fedavg aggregator and without clip_norm"
            )

    def _check_agent_keys(self, keys: Mapping[str, VerifyKey]) -> None:
        for agent in keys:
            check_id(agent, "agent")
        if self.allowed_agents is None:  # a frozen value: set the derived default once
            object.__setattr__(self, "allowed_agents", frozenset(keys))
        elif not self.allowed_agents <= keys.keys():
            missing = sorted(self.allowed_agents - keys.keys())
            raise ValueError(f"allowed agents without an update key: {missing}")
