"""What the agent core takes in (events) and gives back (actions).

Events are facts the adapter observed; actions are commands it carries out in
order. Both are immutable; ``edge_agent.agent`` turns the one into the other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from edge_agent.downlink import KeepModel, Subscribe, Unsubscribe
from edge_agent.feedback import Residual
from edge_agent.trainer import TrainResult
from protocol import ModelAnnouncement, Publish, RejectReason

#: Identifies what an update answers: (run, round, model_id).
RoundKey = tuple[str, int, str]

# --- events (in) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The MQTT session is (re)established; the retained model will follow."""


@dataclass(frozen=True, slots=True)
class ModelArrived:
    """Raw bytes on ``.../model`` or ``.../model/chunk/{i}``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class DeltaArrived:
    """Raw bytes on ``.../delta`` or ``.../delta/chunk/{i}`` (docs/PROTOCOL.md §15)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class SecAggArrived:
    """Raw bytes on ``.../secagg/down`` or ``.../secagg/down/{agent}`` (docs/PROTOCOL.md §14)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class TrainingDone:
    """The trainer finished the round named by ``key``."""

    key: RoundKey
    result: TrainResult
    train_s: float


@dataclass(frozen=True, slots=True)
class TrainingFailed:
    """The trainer could not (or was not allowed to) train ``key``; the agent declines."""

    key: RoundKey
    reason: str


@dataclass(frozen=True, slots=True)
class RollCalled:
    """Raw bytes on ``.../rollcall``: the coordinator asks who is online."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class MessagesLost:
    """The adapter dropped inbound messages (its queue was full): a round may have been missed."""


@dataclass(frozen=True, slots=True)
class ShutdownRequested:
    """The agent is stopping cleanly."""


AgentEvent: TypeAlias = (
    Connected | ModelArrived | DeltaArrived | SecAggArrived | RollCalled | MessagesLost
    | TrainingDone | TrainingFailed | ShutdownRequested
)

# --- actions (out) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Train:
    """Train on ``model``'s weights and plan, then feed back TrainingDone or TrainingFailed.

    ``model`` is the version the device now holds: the adapter persists it."""

    key: RoundKey
    model: ModelAnnouncement


@dataclass(frozen=True, slots=True)
class ModelRejected:
    """A model announcement (or a SecAgg message of the coordinator) was refused; logged."""

    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class UpdateSent:
    """An update (or decline) for ``key`` was handed to MQTT; ``resent`` if from the cache."""

    key: RoundKey
    size: int
    resent: bool


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The coordinator published the final model; ``model`` is the device's to keep
    (persisted as the held version, as :class:`Train`'s model is)."""

    model: ModelAnnouncement


@dataclass(frozen=True, slots=True)
class SaveResidual:
    """The error-feedback residual changed; the adapter persists it (``None``: delete it)."""

    state: Residual | None


AgentAction: TypeAlias = (
    Publish | Train | ModelRejected | UpdateSent | RunFinished | SaveResidual | KeepModel
    | Subscribe | Unsubscribe
)


#: what an adapter queues behind a training: its events, or raw messages not yet handled
D = TypeVar("D")


def defer(deferred: deque[D], item: D, *, whole_model: Callable[[D], bool], lost: D) -> list[D]:
    """Queue ``item`` behind a training; a whole model replaces whole models still queued.
    Returns the items dropped, for the adapter to acknowledge.

    Why: the model topic is retained, so the newest announcement supersedes the older
    ones, and an agent trains on the newest version it holds (docs/PROTOCOL.md §13). A
    slow agent that trained through several FedBuff versions would otherwise train on
    each queued version in turn and fall ever further behind until its updates are
    ``stale``. Chunk frames and manifests are kept (``whole_model`` says False for them):
    they reassemble in order. What was dropped is a loss the core is told of (``lost``,
    a :class:`MessagesLost`), so it takes a version that skips the dropped ones
    (docs/PROTOCOL.md §16.3).
    """
    dropped: list[D] = []
    if whole_model(item):
        dropped = [d for d in deferred if whole_model(d)]
        for old in dropped:
            deferred.remove(old)
        if dropped and not (deferred and deferred[-1] == lost):
            deferred.append(lost)
    deferred.append(item)
    return dropped
