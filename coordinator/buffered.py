"""The buffered asynchronous machine (FedBuff): events and the time in, actions out.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS
    2022: the server keeps a buffer of K client deltas, each scaled by a
    staleness weight s(tau), and applies ``sum(s(tau_i) * delta_i) / K`` with the
    server optimiser once K have arrived.

Beside :mod:`coordinator.rounds`, with the same rules: pure (``now`` passed in),
every phase change one row of ``_TRANSITIONS``, a rejected message changes nothing
but the counters. It shares the update checks (:mod:`coordinator.validation`), the
exact sums, the server step and checkpoint state (:mod:`coordinator.global_model`)
and the wire (:mod:`coordinator.outbox`); settings it cannot honour are refused.

The wire is the synchronous one (docs/PROTOCOL.md, "Buffered asynchronous mode"):
an announcement's ``round`` is the model version, its ``cohort`` names the agents
that may train on it, at most ``concurrency`` agents with work outstanding at any
time; an update's ``round`` and ``model_id`` name the version it was trained from.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from typing_extensions import assert_never

from coordinator import events, staleness
from coordinator.aggregate import Layout
from coordinator.broadcast import Broadcast
from coordinator.checkpoint import Buffered, Checkpoint, LiveVersion
from coordinator.cohort import CohortPolicy
from coordinator.config import RoundConfig
from coordinator.events import (
    Action,
    BrokerConnected,
    Evaluate,
    Evaluated,
    Event,
    MessageRejected,
    PresenceArrived,
    RoundClosed,
    RoundOpened,
    SaveCheckpoint,
    StopRequested,
    Tick,
    UpdateAccepted,
    UpdateArrived,
)
from coordinator.global_model import GlobalModel
from coordinator.open_round import OpenRound
from coordinator.outbox import Outbox, StatusPacer
from coordinator.phases import Trigger
from coordinator.roster import Roster
from coordinator.run_machine import RunMachine
from coordinator.staleness import BufferConfig, StalenessSum, staleness_weight
from coordinator.stopping import stop_reason
from coordinator.validation import Intake, check_codec
from protocol import (
    ClosedBy,
    Phase,
    Publish,
    RejectReason,
    RoundMetrics,
    Update,
    Weights,
    WireError,
    raw_size,
)

_TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    (Phase.WAITING, Trigger.OPEN): Phase.TRAINING,
    (Phase.WAITING, Trigger.FINISH): Phase.DONE,
    (Phase.TRAINING, Trigger.NEXT): Phase.TRAINING,  # a flush published the next version
    (Phase.TRAINING, Trigger.FINISH): Phase.DONE,
    (Phase.WAITING, Trigger.HALT): Phase.STOPPED,
    (Phase.TRAINING, Trigger.HALT): Phase.STOPPED,
}


class BufferedRounds(RunMachine):
    """Drives one FedBuff run. Feed it events with :meth:`handle`; same adapter as Rounds."""

    def __init__(
        self,
        config: RoundConfig,
        buffer: BufferConfig,
        weights: Weights,
        *,
        run: str,
        wall_offset: float = 0.0,
        resume: Checkpoint | None = None,
    ) -> None:
        self.config, self.buffer_config = config, staleness.unsupported_in_buffered(config, buffer)
        self._outbox = Outbox(config, wall_offset=wall_offset)
        self._pacer = StatusPacer(config.status_interval_s)
        self.topics = self._outbox.topics
        self._cohorts, self._roster = CohortPolicy(config), Roster(config)
        self._model = GlobalModel(config, weights, resume)
        self._broadcast = Broadcast(config, self._model.weights)  # whole models only, here
        self._run = resume.run if resume else run
        self._history: list[RoundMetrics] = list(resume.history) if resume else []
        self._rejected_total: Counter[str] = Counter(resume.rejected if resume else {})
        shapes = {name: tuple(a.shape) for name, a in weights.items()}
        self._layout = Layout(shapes)
        self._intake = Intake(config, shapes)
        self._raw_update_bytes = raw_size(shapes)
        self._phase, self._message = Phase.WAITING, ""
        #: server steps taken: the current version is steps + 1
        self._steps = resume.round if resume else 0
        self._live: dict[int, LiveVersion] = {v.version: v for v in resume.live} if resume else {}
        self._entries: list[Buffered] = list(resume.buffer) if resume else []
        self._window: OpenRound | None = None  # the current version's tallies, for status
        self._pending: OpenRound | None = None  # flushed, awaiting its evaluation
        self._staleness: Counter[str] = Counter()  # the last flush's, by tau
        if self._steps >= config.rounds:
            self._phase, self._message = Phase.DONE, f"already completed {self._steps} rounds"

    # --- read-only views -----------------------------------------------------------

    @property
    def version(self) -> int:
        """The newest model version (1 before the first server step)."""
        return self._steps + 1

    @property
    def completed_rounds(self) -> int:
        return self._steps

    @property
    def buffer_fill(self) -> int:
        return len(self._entries)

    @property
    def outstanding(self) -> frozenset[str]:
        """Agents online named on a live version they have not answered: training now."""
        busy = {a for v in self._live.values() for a in v.cohort if a not in v.answered}
        return frozenset(busy & self._roster.online)

    def next_deadline(self) -> float | None:
        """Only a held-back status is timed: a version stands until K updates arrive."""
        return self._pacer.due

    # --- the one entry point ----------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` observed at monotonic time ``now``; return what to do, in order."""
        match event:
            case BrokerConnected():
                return self._on_connected(now)
            case PresenceArrived(agent=agent, payload=payload, retained=retained):
                return [] if retained else self._on_presence(agent, payload, now)
            case UpdateArrived(agent=agent, payload=payload):
                return self._on_update(agent, payload, now)
            case Tick():
                return self._status_due(now)
            case events.SecAggArrived() | events.PartialArrived():  # none here
                return []
            case Evaluated(round_no=version, metrics=metrics):
                return self._on_evaluated(version, metrics, now)
            case StopRequested(reason=reason):
                progress = f"{self._steps} server steps"
                return [] if self.finished else self._halt(reason, progress, now)
            case _:
                assert_never(event)

    # --- event handlers ---------------------------------------------------------------

    def _on_connected(self, now: float) -> list[Action]:
        return self._reconnected(self._window.publishes if self._window else (), now)

    def _on_presence(self, agent: str, payload: bytes, now: float) -> list[Action]:
        try:
            self._roster.apply(agent, payload)
        except WireError as exc:
            return [self._reject(agent, None, exc.reason, f"presence: {exc.detail}")]
        if self._phase is Phase.WAITING and self._cohorts.enough(self._roster,
                                                                 self.config.min_agents):
            self._fire(Trigger.OPEN)
            return self._announce(now)
        if self._phase is Phase.TRAINING and self._free_slots():
            return self._announce(now)  # a newcomer, or a slot an agent going offline freed
        return self._status_soon(now)

    def _on_update(self, agent: str, payload: bytes, now: float) -> list[Action]:
        if self._window is not None:
            self._window.bytes_up += len(payload)
        try:
            taken = self._intake.take_checked(
                self._run, agent, payload, now, lambda u: self._check(agent, u)
            )
        except WireError as exc:
            return [self._reject(agent, None, exc.reason, exc.detail)]
        if taken is None:
            return []
        update, delta = taken
        live = self._live[update.round]
        self._live[update.round] = dataclasses.replace(live, answered=(*live.answered, agent))
        window = self._window
        assert window is not None  # _check refuses every update before version 1
        if delta is None:
            window.declined.add(agent)
            return [self._status(now), *self._refill(now)]
        tau = self.version - update.round
        entry = Buffered(agent, update.round, staleness_weight(self.buffer_config.staleness, tau),
                         delta)
        self._entries.append(entry)
        window.tally(update)
        self._roster.alive(agent)
        accepted = UpdateAccepted(agent, update.round, len(self._entries), self.buffer_config.k)
        if len(self._entries) >= self.buffer_config.k:
            return [accepted, *self._flush(now)]
        # Mid-buffer checkpoint: a restart resumes with these updates still counted.
        return [accepted, SaveCheckpoint(self.checkpoint()), *self._status_soon(now),
                *self._refill(now)]

    def _check(self, agent: str, update: Update) -> None:
        """The buffered mode's rules for an authentic update (see the module docstring).

        Raises:
            WireError: FUTURE_ROUND, STALE, NOT_IN_COHORT, DUPLICATE, BASE_MISMATCH, BAD_CODEC.
        """
        base, current = update.round, self.version
        if self.finished or self._window is None:
            raise WireError(RejectReason.NO_ROUND, "no version is open")
        if base > current:
            raise WireError(RejectReason.FUTURE_ROUND, f"version {base} > current {current}")
        live = self._live.get(base)
        if current - base > self.buffer_config.max_staleness or live is None:
            raise WireError(RejectReason.STALE, f"version {base} lags {current} too far")
        if agent not in live.cohort:
            raise WireError(RejectReason.NOT_IN_COHORT, f"{agent!r} not named on version {base}")
        if agent in live.answered:
            raise WireError(RejectReason.DUPLICATE, f"{agent} already answered version {base}")
        if update.model_id != live.model_id:
            raise WireError(RejectReason.BASE_MISMATCH, f"trained from {update.model_id[:12]}")
        check_codec(self.config, update)

    def _on_evaluated(self, version: int, evaluation: dict[str, float], now: float) -> list[Action]:
        if self.finished or version != self._steps + 1 or self._pending is None:
            return []
        return self._close_version(self._pending, evaluation, now)

    # --- lifecycle ---------------------------------------------------------------------

    def _flush(self, now: float) -> list[Action]:
        """K updates are in: the server step, then metrics (after evaluation) and version v+1."""
        window = self._window
        assert window is not None
        total = StalenessSum(self._layout)
        for entry in self._entries:
            total.add(entry)
        weights, opt_state = self._model.step(total.mean(len(self._entries)))
        self._model.commit(weights, opt_state)
        # every entry was accepted at this version: its tau is this version minus its base
        self._staleness = Counter(str(self.version - e.base) for e in self._entries)
        self._broadcast.advance(weights, self._steps)
        self._entries.clear()
        window.closed_by = ClosedBy.QUORUM
        if not self.config.evaluate:
            return self._close_version(window, {}, now)
        self._pending = window
        return [self._status(now), Evaluate(self._steps + 1, weights)]

    def _close_version(
        self, window: OpenRound, evaluation: dict[str, float], now: float
    ) -> list[Action]:
        self._pending = None
        self._steps += 1
        floor = self.version - self.buffer_config.max_staleness
        self._live = {v: lv for v, lv in self._live.items() if v >= floor}
        metrics = window.metrics(
            job=self.config.job, run=self._run, evaluation=evaluation,
            raw_update_bytes=self._raw_update_bytes, duration_s=now - window.opened_at,
            at=self._outbox.wall(now), epsilon=None,
        )
        metrics = dataclasses.replace(metrics, round=self._steps, accepted=self.buffer_config.k,
                                      staleness=dict(sorted(self._staleness.items(),
                                                           key=lambda kv: int(kv[0]))))
        self._history.append(metrics)
        actions: list[Action] = [
            SaveCheckpoint(self.checkpoint()), self._outbox.metrics(metrics), RoundClosed(metrics)
        ]
        why = stop_reason(self.config, self._history)
        if why is not None:
            return actions + self._end(Trigger.FINISH, why, now)
        self._fire(Trigger.NEXT)
        return actions + self._announce(now)

    def _eligible(self) -> frozenset[str]:
        return self._cohorts.eligible(frozenset(self._roster.online), self._roster.presences)

    def _free_slots(self) -> int:
        limit = self.buffer_config.concurrency
        idle = self._eligible() - self.outstanding - self._answered_current()
        room = len(idle) if limit is None else min(len(idle), limit - len(self.outstanding))
        return max(room, 0)

    def _answered_current(self) -> frozenset[str]:
        return frozenset(self._live[self.version].answered if self.version in self._live else ())

    def _refill(self, now: float) -> list[Action]:
        """An agent answered: if an idle agent may now take its slot, re-announce."""
        return self._announce(now) if self._free_slots() else []

    def _announce(self, now: float) -> list[Action]:
        """Announce the current version naming every outstanding agent plus idle ones drawn
        (seeded) up to the concurrency limit: no more agents than that ever hold work."""
        version, outstanding = self.version, self.outstanding
        idle = self._eligible() - outstanding - self._answered_current()
        limit = self.buffer_config.concurrency
        room = len(idle) if limit is None else max(limit - len(outstanding), 0)
        live = self._live.get(version)
        attempt = 0 if live is None else (self._window.attempt + 1 if self._window else 0)
        drawn = self._cohorts.draw(idle, min(room, len(idle)), self._roster.presences,
                                   version, attempt) if room and idle else frozenset()
        # An agent gone offline untrained loses its slot for good: back, it is not named.
        cohort = self._answered_current() | outstanding | drawn
        model_id = self._broadcast.version.model_id
        self._live[version] = LiveVersion(version, model_id, tuple(sorted(cohort)),
                                          live.answered if live else ())
        if self._window is None or self._window.number != version:
            self._window = OpenRound(
                number=version, attempt=0, opened_at=now, deadline=now + self.config.deadline_s,
                deadline_s=self.config.deadline_s, cohort=cohort, quorum=self.buffer_config.k,
                aggregator=self._model.aggregator(version, len(cohort)),
            )
        window = self._window
        window.attempt, window.cohort = attempt, cohort
        sent = self._outbox.announcement(
            run=self._run, round_no=version, attempt=attempt, deadline_s=window.deadline_s,
            cohort=cohort, version=self._broadcast.version, now=now,
            max_staleness=self.buffer_config.max_staleness, names_cohort=True,
        )
        window.publishes = sent.publishes
        window.bytes_down += (sent.whole_bytes + sent.delta_bytes) * len(drawn | outstanding)
        opened = RoundOpened(version, attempt, len(cohort), self.buffer_config.k, window.deadline_s)
        return [*sent.publishes, opened, self._status(now)]

    # --- outputs ---------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The model after the last server step, the buffer since, and the live versions."""
        base = self._model.checkpoint(run=self._run, completed=self._steps,
                                      history=tuple(self._history), rejected=self._rejected_total)
        live = tuple(self._live[v] for v in sorted(self._live))
        return dataclasses.replace(base, buffer=tuple(self._entries), live=live)

    def _final_model(self, now: float) -> list[Action]:
        return list(self._outbox.final_model(
            run=self._run, completed=self._steps, version=self._broadcast.version, now=now,
        ).publishes)

    def _status(self, now: float) -> Publish:
        self._pacer.sent(now)
        return self._outbox.status(
            run=self._run, phase=self._phase, last_round=self._window, completed=self._steps,
            agents_online=len(self._roster.online), rejected=self._rejected_total,
            message=self._message, now=now, mode="fedbuff",
        )

    def _reject(
        self, agent: str | None, version: int | None, reason: RejectReason, detail: str
    ) -> MessageRejected:
        self._rejected_total[reason.value] += 1
        if self._window is not None:
            self._window.rejected[reason.value] += 1
        return MessageRejected(agent, version, reason, detail)

    def _fire(self, trigger: Trigger) -> None:
        try:
            self._phase = _TRANSITIONS[self._phase, trigger]
        except KeyError:
            raise RuntimeError(f"illegal transition {trigger.value} in {self._phase}") from None
