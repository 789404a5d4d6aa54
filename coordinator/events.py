"""What the round machine takes in (events) and gives back (actions).

Events are facts the adapter observed; actions are commands it carries out in
order. Both are immutable. Bytes go in and bytes come out: the machine decodes
and encodes itself, so every rejection is counted in one place and the adapter
never needs to know the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from coordinator.checkpoint import Checkpoint
from protocol import Phase, RejectReason, RoundMetrics, Weights
from protocol.publish import Publish

# --- events (in) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerConnected:
    """The adapter (re)connected; retained state may have been lost with the broker."""


@dataclass(frozen=True, slots=True)
class UpdateArrived:
    """Raw bytes on ``.../update/{agent}``; ``agent`` is the topic's last level, not yet
    checked: a level that is no valid id is refused (``malformed``) like the payload."""

    agent: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class SecAggArrived:
    """Raw bytes on ``.../secagg/up/{agent}`` (docs/PROTOCOL.md §14); ``agent`` from the topic."""

    agent: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PresenceArrived:
    """Raw bytes on ``.../agents/{agent}`` (``agent`` as in :class:`UpdateArrived`); an empty
    payload clears a retained presence."""

    agent: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; the machine checks its deadline."""


@dataclass(frozen=True, slots=True)
class Evaluated:
    """Server-side evaluation of round ``round_no``'s new global model finished."""

    round_no: int
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class PartialArrived:
    """A site aggregator or ingest worker published its partial aggregate of a round."""

    aggregator: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class StopRequested:
    """The operator asked the run to end (Ctrl-C, SIGTERM)."""

    reason: str


Event: TypeAlias = (
    BrokerConnected
    | UpdateArrived
    | SecAggArrived
    | PresenceArrived
    | PartialArrived
    | Tick
    | Evaluated
    | StopRequested
)

# --- actions (out) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundOpened:
    """Round ``round_no`` (attempt ``attempt``) was announced to ``cohort_size`` agents."""

    round_no: int
    attempt: int
    cohort_size: int
    quorum: int
    deadline_s: float


@dataclass(frozen=True, slots=True)
class UpdateAccepted:
    """An update was folded into the round's aggregate."""

    agent: str
    round_no: int
    accepted: int
    quorum: int


@dataclass(frozen=True, slots=True)
class PartialMerged:
    """A partial aggregate was merged: its ``contributors`` count as accepted updates."""

    aggregator: str
    round_no: int
    contributors: int
    accepted: int
    quorum: int


@dataclass(frozen=True, slots=True)
class MessageRejected:
    """A message was refused; the adapter logs it. The machine has already counted it."""

    agent: str | None
    round_no: int | None
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class Evaluate:
    """Evaluate ``weights`` on held-out data, then feed back :class:`Evaluated`."""

    round_no: int
    weights: Weights


@dataclass(frozen=True, slots=True)
class SaveCheckpoint:
    """Write ``checkpoint`` atomically before anything that follows is carried out."""

    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class RoundClosed:
    """A round is complete; ``metrics`` is what was published for it."""

    metrics: RoundMetrics


@dataclass(frozen=True, slots=True)
class Stop:
    """The run is over; ``phase`` is DONE or FAILED and ``message`` says why."""

    phase: Phase
    message: str


Action: TypeAlias = (
    Publish
    | RoundOpened
    | UpdateAccepted
    | PartialMerged
    | MessageRejected
    | Evaluate
    | SaveCheckpoint
    | RoundClosed
    | Stop
)
