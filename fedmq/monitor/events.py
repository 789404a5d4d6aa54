"""What the monitor's state model reports: one immutable event per change it saw.

Each event has a JSON form (``fedmq monitor --json`` prints one object a line,
its ``event`` key naming the kind) and a one-line text form (the monitor's
output when stdout is not a terminal). Both are part of the monitor's output
contract, documented in docs/WATCHING.md; add keys, never rename them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

from typing_extensions import assert_never

from fedmq.progress import staleness_text
from protocol import Phase, RejectReason, RoundMetrics, Status


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent as its retained presence describes it."""

    online: bool
    samples: int | None
    device: str | None
    trainer: str | None
    #: the presence's own Unix timestamp; 0 for a last will, which is written at connect time
    at: float


@dataclass(frozen=True, slots=True)
class ModelHeader:
    """A model announcement without its tensors: all the monitor keeps of it."""

    run: str
    round: int
    attempt: int
    done: bool
    task: str
    codec: str
    deadline_s: float
    issued_at: float
    #: the whole announcement's size, i.e. what each agent downloads for the round
    size_bytes: int


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """The coordinator's retained status changed."""

    job: str
    status: Status
    retained: bool


@dataclass(frozen=True, slots=True)
class RoundSeen:
    """A round's metrics, the first time this (run, round) was seen."""

    job: str
    metrics: RoundMetrics
    retained: bool


@dataclass(frozen=True, slots=True)
class AgentChanged:
    """An agent's presence changed; ``agent_view`` is None once its presence was cleared."""

    job: str
    agent: str
    agent_view: AgentView | None
    retained: bool


@dataclass(frozen=True, slots=True)
class ModelSeen:
    """A new global model announcement (only with the model topic subscribed)."""

    job: str
    header: ModelHeader
    retained: bool


@dataclass(frozen=True, slots=True)
class RunFinished:
    """A run's status reached ``done`` or ``failed``."""

    job: str
    run: str
    phase: Phase
    message: str
    retained: bool


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message the monitor could not use; counted under ``kind`` and otherwise ignored."""

    kind: str
    topic: str
    reason: RejectReason
    detail: str


MonitorEvent: TypeAlias = (
    StatusChanged | RoundSeen | AgentChanged | ModelSeen | RunFinished | Malformed
)


def status_dict(s: Status) -> dict[str, Any]:
    d = asdict(s)
    d["phase"] = s.phase.value
    d["rejected"] = dict(s.rejected)
    return d


def metrics_dict(m: RoundMetrics) -> dict[str, Any]:
    d = asdict(m)
    d["closed_by"] = m.closed_by.value
    d["rejected"] = dict(m.rejected)
    return d


def to_json(event: MonitorEvent, seen_at: float) -> dict[str, Any]:
    """The event as a JSON-ready dict; ``seen_at`` is the monitor's Unix time of arrival."""
    head: dict[str, Any]
    match event:
        case StatusChanged(job=job, status=status, retained=retained):
            head = {"event": "status", "job": job, "retained": retained}
            body = status_dict(status)
        case RoundSeen(job=job, metrics=metrics, retained=retained):
            head = {"event": "round", "job": job, "retained": retained}
            body = metrics_dict(metrics)
        case AgentChanged(job=job, agent=agent, agent_view=view, retained=retained):
            head = {"event": "presence", "job": job, "agent": agent, "retained": retained}
            body = asdict(view) if view is not None else {"online": None, "cleared": True}
        case ModelSeen(job=job, header=header, retained=retained):
            head = {"event": "model", "job": job, "retained": retained}
            body = asdict(header)
        case RunFinished(job=job, run=run, phase=phase, message=message, retained=retained):
            head = {"event": "finished", "job": job, "retained": retained}
            body = {"run": run, "phase": phase.value, "message": message}
        case Malformed(kind=kind, topic=topic, reason=reason, detail=detail):
            head = {"event": "malformed", "kind": kind, "topic": topic}
            body = {"reason": reason.value, "detail": detail}
        case _:
            assert_never(event)
    return {**head, **body, "seen_at": seen_at}


def describe(event: MonitorEvent) -> str:
    """One human-readable line, for a log or a pipe."""
    match event:
        case StatusChanged(job=job, status=s):
            buffered = s.mode == "fedbuff"  # round: the model version; replies: the buffer
            word, fill = ("version", "buffer") if buffered else ("round", "replies")
            left = f"  {fill} {s.accepted}/{s.quorum}" if s.phase is Phase.TRAINING else ""
            return f"{job}: {s.phase.value} {word} {s.round}/{s.rounds}{left}"
        case RoundSeen(job=job, metrics=m):
            acc = f"acc {m.accuracy:.4f}" if m.accuracy is not None else "acc -"
            if m.epsilon is not None:
                acc += f", epsilon {m.epsilon:.3g}"
            if m.staleness:
                acc += f", staleness {staleness_text(m.staleness)}"
            rejected = sum(m.rejected.values())
            return (
                f"{job}: round {m.round} closed by {m.closed_by.value}: {m.accepted} accepted, "
                f"{m.declined} declined, {rejected} rejected, {acc}, "
                f"up {m.bytes_up} B, down {m.bytes_down} B, {m.duration_s:.2f} s"
            )
        case AgentChanged(job=job, agent=agent, agent_view=view):
            state = "cleared" if view is None else ("online" if view.online else "offline")
            return f"{job}: agent {agent} {state}"
        case ModelSeen(job=job, header=h):
            what = "final model" if h.done else f"model for round {h.round} attempt {h.attempt}"
            return f"{job}: {what} ({h.size_bytes} B)"
        case RunFinished(job=job, run=run, phase=phase, message=message):
            return f"{job}: run {run} {phase.value}: {message}"
        case Malformed(kind=kind, topic=topic, reason=reason, detail=detail):
            return f"malformed {kind} on {topic}: {reason.value}: {detail}"
        case _:
            assert_never(event)
