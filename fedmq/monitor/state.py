"""What the monitor knows about every job it has seen, built only from the topics.

Rules of this module:
1. Pure: :meth:`MonitorState.apply` takes a topic, its payload, the retain flag
   and the time, and returns events. It never reads a clock, never touches paho.
2. It never raises for what a peer sent. A message it cannot use is counted
   under its topic kind in :attr:`MonitorState.malformed`, reported as one
   :class:`~fedmq.monitor.events.Malformed` event, and changes nothing else.
3. ``now`` is the monitor's Unix time, not a monotonic clock: the only times on
   the wire are the coordinator's wall-clock ``*_at`` fields (peers share no
   monotonic clock), so the deadline countdown is ``deadline_at - now`` and is
   off by the clock skew between the two hosts.
4. Order and duplicates (QoS 1 redelivers; a restarted coordinator or a
   reconnecting monitor gets retained messages again): metrics count once per
   (run, round); a status older (by ``at``) than the one held for the same run
   is stale; a presence older than the one held for that agent is stale, except
   a last will, which carries no time. Stale and repeated messages produce no
   event and are counted in :attr:`JobView.ignored`.
5. Nothing megabyte-sized is kept: a model announcement is read only up to its
   tensors, which are skipped undecoded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import assert_never

from fedmq.monitor.events import (
    AgentChanged,
    AgentView,
    Malformed,
    ModelHeader,
    ModelSeen,
    MonitorEvent,
    RoundSeen,
    RunFinished,
    StatusChanged,
)
from protocol import (
    SCHEMA_VERSION,
    Phase,
    RejectReason,
    RoundMetrics,
    Status,
    TopicKind,
    WireError,
    decode_metrics,
    decode_presence,
    decode_status,
    parse_topic,
)
from protocol.peek import peek_fields
from protocol.signing import open_presence

#: rounds kept per job; the table shows the newest few, the rest only bounds memory
MAX_ROUNDS_KEPT = 1000
#: largest model announcement the monitor will read a header from
MAX_MODEL_BYTES = 1 << 30

#: phases after which a coordinator does no more (stopped: until it is resumed)
_FINISHED = (Phase.DONE, Phase.FAILED, Phase.STOPPED)
_MAX_HEADER_STR = 256
_MODEL_HEADER_KEYS = frozenset(
    {"v", "type", "job", "run", "round", "attempt", "task", "codec", "deadline_s", "done",
     "issued_at"}
)


@dataclass(slots=True)
class JobView:
    """One job as seen from its topics."""

    job: str
    status: Status | None = None
    agents: dict[str, AgentView] = field(default_factory=dict)
    #: closed rounds keyed by (run, round), in arrival order
    rounds: dict[tuple[str, int], RoundMetrics] = field(default_factory=dict)
    model: ModelHeader | None = None
    #: messages that changed nothing: "duplicate_<kind>", "stale_<kind>", "cleared_<kind>"
    ignored: Counter[str] = field(default_factory=Counter)
    last_seen: float = 0.0

    @property
    def run(self) -> str | None:
        """The run the status names, else the run of the newest metrics."""
        if self.status is not None:
            return self.status.run
        newest = max(self.rounds.values(), key=lambda m: m.at, default=None)
        return newest.run if newest is not None else None

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status.phase in _FINISHED

    def recent_rounds(self, count: int) -> list[RoundMetrics]:
        """The current run's last ``count`` closed rounds, in round order."""
        run = self.run
        mine = sorted((m for (r, _), m in self.rounds.items() if r == run), key=lambda m: m.round)
        return mine[-count:] if count > 0 else []

    def last_staleness(self) -> RoundMetrics | None:
        """The newest metrics with a staleness histogram (FedBuff, --carry-late), or None."""
        return next((m for m in reversed(self.recent_rounds(MAX_ROUNDS_KEPT)) if m.staleness),
                    None)

    def last_evaluated(self) -> RoundMetrics | None:
        """The current run's latest round that carries a test accuracy or loss."""
        for m in reversed(self.recent_rounds(MAX_ROUNDS_KEPT)):
            if m.accuracy is not None or m.loss is not None:
                return m
        return None

    def deadline_in(self, now: float) -> float | None:
        """Seconds left before the open round's deadline (negative once passed)."""
        s = self.status
        if s is None or s.phase is not Phase.TRAINING or s.deadline_at is None:
            return None
        return s.deadline_at - now

    def agent_counts(self) -> tuple[int, int]:
        """(online, offline) according to the agents' retained presence."""
        online = sum(1 for a in self.agents.values() if a.online)
        return online, len(self.agents) - online


class MonitorState:
    """Every job seen on the topics; feed it messages with :meth:`apply`."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobView] = {}
        #: unusable messages per topic kind ("status", "metrics", "agents", "model", "topic", ...)
        self.malformed: Counter[str] = Counter()
        #: messages on topics the monitor does not follow (e.g. agents' updates)
        self.ignored: Counter[str] = Counter()
        self.messages = 0

    def apply(self, topic: str, payload: bytes, retained: bool, now: float) -> list[MonitorEvent]:
        """Take one message observed at Unix time ``now``; return what changed."""
        self.messages += 1
        try:
            ref = parse_topic(topic)
        except WireError as exc:
            return [self._malformed("topic", topic, exc)]
        try:
            match ref.kind:
                case TopicKind.STATUS:
                    return self._on_status(ref.job, payload, retained, now)
                case TopicKind.METRICS:
                    return self._on_metrics(ref.job, payload, retained, now)
                case TopicKind.AGENTS:
                    assert ref.agent is not None  # parse_topic guarantees it for AGENTS
                    return self._on_presence(ref.job, ref.agent, payload, retained, now)
                case TopicKind.MODEL:
                    return self._on_model(ref.job, payload, retained, now)
                case (TopicKind.UPDATE | TopicKind.SECAGG | TopicKind.DELTA | TopicKind.PARTIAL
                      | TopicKind.ROLLCALL | TopicKind.VERDICT):  # metrics count them
                    self.ignored[ref.kind.value] += 1
                    return []
                case _:
                    assert_never(ref.kind)
        except WireError as exc:
            return [self._malformed(ref.kind.value, topic, exc)]

    # --- per topic kind ------------------------------------------------------------------

    def _job(self, job: str, now: float) -> JobView:
        view = self.jobs.get(job)
        if view is None:
            view = self.jobs[job] = JobView(job)
        view.last_seen = now
        return view

    def _on_status(
        self, job: str, payload: bytes, retained: bool, now: float
    ) -> list[MonitorEvent]:
        if not payload:
            self._job(job, now).ignored["cleared_status"] += 1
            return []
        status = decode_status(payload)
        _same_job(job, status.job)
        view = self._job(job, now)
        held = view.status
        if held == status:
            view.ignored["duplicate_status"] += 1
            return []
        if held is not None and held.run == status.run and status.at < held.at:
            view.ignored["stale_status"] += 1
            return []
        was_finished = held is not None and held.run == status.run and view.finished
        view.status = status
        events: list[MonitorEvent] = [StatusChanged(job, status, retained)]
        if status.phase in _FINISHED and not was_finished:
            events.append(RunFinished(job, status.run, status.phase, status.message, retained))
        return events

    def _on_metrics(
        self, job: str, payload: bytes, retained: bool, now: float
    ) -> list[MonitorEvent]:
        if not payload:
            self._job(job, now).ignored["cleared_metrics"] += 1
            return []
        metrics = decode_metrics(payload)
        _same_job(job, metrics.job)
        view = self._job(job, now)
        key = (metrics.run, metrics.round)
        if key in view.rounds:
            view.ignored["duplicate_metrics"] += 1
            return []
        view.rounds[key] = metrics
        while len(view.rounds) > MAX_ROUNDS_KEPT:
            del view.rounds[next(iter(view.rounds))]
        return [RoundSeen(job, metrics, retained)]

    def _on_presence(
        self, job: str, agent: str, payload: bytes, retained: bool, now: float
    ) -> list[MonitorEvent]:
        if not payload:
            view = self._job(job, now)
            if view.agents.pop(agent, None) is None:
                view.ignored["cleared_agents"] += 1
                return []
            return [AgentChanged(job, agent, None, retained)]
        # The secure profile's presence is signed; the monitor shows it, unverified, as
        # it shows everything on the topics (it holds no agent keys).
        body, _session = open_presence(payload, job=job, agent=agent, keys=None)
        presence = decode_presence(body)
        if presence.agent != agent:
            raise WireError(RejectReason.AGENT_MISMATCH, f"presence names {presence.agent!r}")
        new = AgentView(
            presence.online, presence.samples, presence.device, presence.trainer, presence.at
        )
        view = self._job(job, now)
        held = view.agents.get(agent)
        if held == new:
            view.ignored["duplicate_agents"] += 1
            return []
        if held is not None and 0 < new.at < held.at:
            view.ignored["stale_agents"] += 1
            return []
        view.agents[agent] = new
        return [AgentChanged(job, agent, new, retained)]

    def _on_model(
        self, job: str, payload: bytes, retained: bool, now: float
    ) -> list[MonitorEvent]:
        if not payload:
            self._job(job, now).ignored["cleared_model"] += 1
            return []
        fields = peek_model_header(payload)
        _same_job(job, fields.pop("job"))
        header = ModelHeader(**fields, size_bytes=len(payload))
        view = self._job(job, now)
        held = view.model
        if held is not None and (held.run, held.round, held.attempt, held.done) == (
            header.run, header.round, header.attempt, header.done
        ):
            view.ignored["duplicate_model"] += 1
            return []
        view.model = header
        return [ModelSeen(job, header, retained)]

    def _malformed(self, kind: str, topic: str, exc: WireError) -> Malformed:
        self.malformed[kind] += 1
        return Malformed(kind, topic, exc.reason, exc.detail)


def _same_job(topic_job: str, payload_job: object) -> None:
    if payload_job != topic_job:
        raise WireError(RejectReason.WRONG_JOB, f"payload names job {payload_job!r}")


def peek_model_header(payload: bytes) -> dict[str, Any]:
    """The header fields of a model announcement, its tensors skipped undecoded.

    :func:`protocol.decode_model` would decode every tensor into an array: the
    monitor only wants to know which round the model is for.

    Raises:
        WireError: for a payload that is not a version-1 model announcement map.
    """
    if len(payload) > MAX_MODEL_BYTES:
        raise WireError(RejectReason.TOO_LARGE, f"model: {len(payload)} bytes")
    try:
        found = peek_fields(payload, _MODEL_HEADER_KEYS)
    except ValueError as exc:
        raise WireError(RejectReason.MALFORMED, f"model: {exc}") from None
    if found.get("v") != SCHEMA_VERSION or found.get("type") != "model":
        raise WireError(RejectReason.BAD_VERSION, f"model: version {found.get('v')!r}")
    try:
        return {
            "job": _typed(found, "job", str),
            "run": _typed(found, "run", str),
            "round": _typed(found, "round", int),
            "attempt": _typed(found, "attempt", int),
            "done": _typed(found, "done", bool),
            "task": _typed(found, "task", str),
            "codec": _typed(found, "codec", str),
            "deadline_s": float(_typed(found, "deadline_s", int | float)),
            "issued_at": float(_typed(found, "issued_at", int | float)),
        }
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(RejectReason.MALFORMED, f"model: {exc}") from None


def _typed(found: dict[str, Any], key: str, kind: Any) -> Any:
    value = found.get(key)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(f"{key}: expected {kind}, got {type(value).__name__}")
    if isinstance(value, str) and len(value) > _MAX_HEADER_STR:
        raise ValueError(f"{key}: longer than {_MAX_HEADER_STR} characters")
    return value
