"""The messages fedmq exchanges, as immutable values.

Field meanings, types and limits are specified in docs/PROTOCOL.md; encoding
and validation live in :mod:`protocol.wire`. Times on the wire are either
durations in seconds (``*_s``) or Unix wall-clock timestamps (``*_at``): peers
share no monotonic clock.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.cohort_hash import CohortHash
from protocol.tensors import Weights

if TYPE_CHECKING:
    from protocol.secagg.messages import SecAggConfig

SCHEMA_VERSION = 1

#: Scalars allowed in option and metric maps.
Scalar = int | float | str | bool


class Phase(str, enum.Enum):
    """The coordinator's phase, as published on the status topic."""

    #: waiting for enough agents to come online before round 1
    WAITING = "waiting"
    #: a round is open: agents train and reply
    TRAINING = "training"
    #: the round closed and the new global model is being evaluated
    EVALUATING = "evaluating"
    #: the run finished (rounds done or target reached): the final model is published
    DONE = "done"
    #: the run stopped because a round could not gather enough replies
    FAILED = "failed"
    #: the operator stopped the coordinator; the run is not over: agents wait for it to
    #: resume (``--resume``), and no final model was published
    STOPPED = "stopped"


class ClosedBy(str, enum.Enum):
    """Why a round closed."""

    #: ``quorum`` updates were accepted
    QUORUM = "quorum"
    #: every agent asked has replied or declined
    ALL_REPLIED = "all_replied"
    #: the deadline passed with at least ``min_replies`` accepted
    DEADLINE = "deadline"


@dataclass(frozen=True, slots=True)
class TrainPlan:
    """What an agent does with the model: local epochs, batch size, learning rate.

    ``seed`` makes local training reproducible: agent ``k`` shuffles round ``r``
    with ``numpy.random.default_rng([seed, r, k])``. ``options`` carries
    task-specific scalars (for example a proximal ``mu``).
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    seed: int = 0
    options: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelAnnouncement:
    """The global model for one round (retained on ``.../model``)."""

    job: str
    run: str
    round: int
    model_id: str
    task: str
    plan: TrainPlan
    codec: str
    deadline_s: float
    weights: Weights
    attempt: int = 0
    cohort: tuple[str, ...] | None = None
    done: bool = False
    issued_at: float = 0.0
    #: the broker's payload cap: agents send updates above it as chunks (0: no cap)
    max_payload: int = 0
    #: agents the coordinator refused as never announced: each named one announces itself
    #: again (docs/PROTOCOL.md, "Membership")
    roll_call: tuple[str, ...] = ()
    #: buffered mode: updates trained from a version this many behind ``round`` are still
    #: taken, so an agent finishes and sends work on an older version (0: synchronous)
    max_staleness: int = 0
    #: the codec of the deltas this run sends on ``.../delta`` (docs/PROTOCOL.md §15):
    #: set, an agent holding this model may stop fetching whole ones; None: no deltas
    delta_codec: str | None = None

    #: this round is securely aggregated (docs/PROTOCOL.md §14); None: a plain round
    secagg: SecAggConfig | None = None
    #: the round asks the agents passing this hash (docs/PROTOCOL.md §17); ``cohort`` is
    #: then None. None: ``cohort`` says who is asked
    cohort_hash: CohortHash | None = None


@dataclass(frozen=True, slots=True)
class ModelDelta:
    """One version of the broadcast model, as a change from the version before it
    (retained on ``.../delta``; docs/PROTOCOL.md §15).

    The header is a model announcement's; instead of weights it names the version it
    applies to (``base_id``) and carries that change as update-codec entries. Applied to
    the base with :func:`protocol.broadcast.apply_delta`, the result must hash to
    ``model_id``. Without a ``base_id`` it is a notice: this version travels whole only.
    """

    job: str
    run: str
    round: int
    model_id: str
    task: str
    plan: TrainPlan
    codec: str
    deadline_s: float
    #: the model_id this delta applies to; None: a notice, with no tensors
    base_id: str | None
    #: the codec the entries are written with; None: the run sends no deltas at all
    delta_codec: str | None
    #: the broadcast model's dtype: ``<f4``, or ``<f2`` (every weight a float16 value)
    dtype: str
    tensors: tuple[Mapping[str, Any], ...] = ()
    attempt: int = 0
    cohort: tuple[str, ...] | None = None
    done: bool = False
    issued_at: float = 0.0
    max_payload: int = 0
    max_staleness: int = 0
    #: a SecAgg round's configuration, as in the announcement
    secagg: SecAggConfig | None = None
    #: as in the announcement (docs/PROTOCOL.md §16.2)
    roll_call: tuple[str, ...] = ()
    #: as in the announcement (docs/PROTOCOL.md §17)
    cohort_hash: CohortHash | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """One agent's reply to one round.

    ``tensors`` holds the encoded delta (``local - global``) exactly as the
    codec named by ``codec`` wrote it; :func:`protocol.compress.decode_delta`
    turns it back into float32 arrays once the expected shapes are known. A
    decline carries a reason and no tensors.
    """

    job: str
    agent: str
    round: int
    model_id: str
    samples: int
    codec: str
    tensors: tuple[Mapping[str, Any], ...]
    metrics: Mapping[str, float] = field(default_factory=dict)
    train_s: float = 0.0
    declined: str | None = None


@dataclass(frozen=True, slots=True)
class RollCall:
    """The coordinator asks every agent connected to announce its presence now (live).

    Published (QoS 1, not retained) whenever the coordinator (re)connects, so that it
    learns who is online without relying on retained presence reaching its wildcard
    subscription (docs/PROTOCOL.md §16.5, docs/BROKERS.md).
    """

    job: str
    run: str
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Presence:
    """An agent's liveness and what it offers (retained on ``.../agents/{agent}``)."""

    agent: str
    online: bool
    samples: int | None = None
    device: str | None = None
    trainer: str | None = None
    at: float = 0.0
    #: which implementation the agent is: ``"python"`` (edge_agent) or ``"browser"`` (web/)
    kind: str | None = None
    #: the agent takes delta-coded models (docs/PROTOCOL.md §15): it follows ``.../delta``
    deltas: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    """The coordinator's live state (retained on ``.../status``)."""

    job: str
    run: str
    phase: Phase
    round: int
    rounds: int
    attempt: int
    accepted: int
    quorum: int
    min_replies: int
    cohort_size: int
    agents_online: int
    deadline_at: float | None
    rejected: Mapping[str, int]
    at: float
    message: str = ""
    #: ``fedbuff``: ``round`` is the model version, ``accepted`` and ``quorum`` the buffer's
    #: fill and K (docs/PROTOCOL.md §13); ``sync``: rounds (written only when not ``sync``)
    mode: str = "sync"


@dataclass(frozen=True, slots=True)
class RoundMetrics:
    """The outcome of one closed round (on ``.../metrics``)."""

    job: str
    run: str
    round: int
    closed_by: ClosedBy
    accepted: int
    declined: int
    rejected: Mapping[str, int]
    samples: int
    duration_s: float
    bytes_up: int
    bytes_down: int
    raw_bytes_up: int
    accuracy: float | None = None
    loss: float | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    at: float = 0.0
    #: DP-FedAvg: the run's privacy loss epsilon after this round, at the job's delta
    epsilon: float | None = None
    #: the float32 baseline of ``bytes_down``: 4 x parameters per (announcement, agent)
    raw_bytes_down: int | None = None
    #: the (announcement, agent) pairs ``bytes_down`` counts: bytes_down / addressed is the
    #: downlink per device (docs/PROTOCOL.md §15.6)
    addressed: int | None = None
    #: SecAgg rounds: who dropped out in which phase (``keys``, ``shares``, ``masked``,
    #: ``unmask``), each list sorted (docs/PROTOCOL.md §14.8)
    secagg: Mapping[str, tuple[str, ...]] | None = None
    #: the updates this step applied by staleness tau (``"0"``: trained on the model it
    #: moved): FedBuff's steps, and rounds carrying late updates (``--carry-late``)
    staleness: Mapping[str, int] | None = None
