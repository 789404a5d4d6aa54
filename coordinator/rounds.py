"""The round state machine: events and the time in, actions out.

Rules of this module:
1. Every phase change goes through :func:`coordinator.phases.next_phase`, whose one
   table lists every legal (phase, trigger) -> phase; anything else is a bug and raises.
2. It never reads a clock, never touches paho, never sleeps: ``now`` is
   monotonic seconds passed in by the adapter, and ``next_deadline()`` tells the
   adapter when to call back with a :class:`~coordinator.events.Tick`.
3. A rejected message changes nothing but the rejection counters.

What it delegates, one concern each: who may be asked (:mod:`coordinator.cohort`),
whether an update or a partial aggregate may enter (:mod:`coordinator.validation`,
:mod:`coordinator.partials`), when the run ends
(:mod:`coordinator.stopping`), and how everything is said on the wire
(:mod:`coordinator.outbox`).

A round: draw the cohort -> announce the model (retained) -> accept updates ->
close at quorum, when everyone asked has answered, or at the deadline with
``min_replies`` -> aggregate -> server optimiser step -> evaluate -> publish
metrics -> checkpoint -> announce the next round (or stop).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from typing_extensions import assert_never

from coordinator.aggregate import AggregationError
from coordinator.broadcast import Broadcast
from coordinator.checkpoint import Checkpoint
from coordinator.cohort import CohortPolicy
from coordinator.config import RoundConfig
from coordinator.events import (
    Action,
    BrokerConnected,
    Evaluate,
    Evaluated,
    Event,
    MessageRejected,
    PartialArrived,
    PartialMerged,
    PresenceArrived,
    RoundClosed,
    RoundOpened,
    SaveCheckpoint,
    SecAggArrived,
    StopRequested,
    Tick,
    UpdateAccepted,
    UpdateArrived,
)
from coordinator.global_model import GlobalModel
from coordinator.open_round import OpenRound
from coordinator.outbox import Outbox, StatusPacer
from coordinator.partials import admit_partial, verdict
from coordinator.phases import Trigger, next_phase
from coordinator.roster import Roster
from coordinator.run_machine import RunMachine
from coordinator.secure_round import SecAggStage, SecAggStep
from coordinator.stopping import stop_reason
from coordinator.stragglers import LateUpdates
from coordinator.validation import Intake, RunView
from protocol import (
    ClosedBy,
    Phase,
    Publish,
    RejectReason,
    RoundMetrics,
    Weights,
    WireError,
    raw_size,
)


class Rounds(RunMachine):
    """Drives one federated run. Feed it events with :meth:`handle`."""

    def __init__(self, config: RoundConfig, weights: Weights, *, run: str,
                 wall_offset: float = 0.0, resume: Checkpoint | None = None) -> None:
        """``wall_offset`` turns monotonic ``now`` into Unix time for the wire."""
        self.config = config
        self._outbox = Outbox(config, wall_offset=wall_offset)
        self._pacer = StatusPacer(config.status_interval_s)
        self.topics = self._outbox.topics
        self._roster = Roster(config)
        self._model = GlobalModel(config, weights, resume)  # checks resume fits the config
        self._run = resume.run if resume else run
        self._cohorts = CohortPolicy(config, self._run)  # a hashed cohort hashes the run
        self._completed = resume.round if resume else 0
        self._history: list[RoundMetrics] = list(resume.history) if resume else []
        self._rejected_total: Counter[str] = Counter(resume.rejected if resume else {})
        self._phase, self._message = Phase.WAITING, ""
        self._round: OpenRound | None = None
        previous = resume.broadcast if resume else None  # the version agents hold (§15)
        self._broadcast = Broadcast(config, self._model.weights, previous)
        shapes = {name: tuple(a.shape) for name, a in weights.items()}
        self._intake = Intake(config, shapes)
        self._secagg = SecAggStage(config, shapes) if config.secagg is not None else None
        self._raw_update_bytes = raw_size(shapes)
        self._late = LateUpdates(config, resume)  # --carry-late (coordinator/stragglers.py)
        if self._completed >= config.rounds:
            self._phase = Phase.DONE
            self._message = f"already completed {self._completed} rounds"

    @property
    def completed_rounds(self) -> int:
        return self._completed

    @property
    def carried_total(self) -> int:
        """Late updates carried into a later round (``--carry-late``) by this process."""
        return self._late.carried_total

    def next_deadline(self) -> float | None:
        """When the adapter must send a :class:`Tick`, or None if nothing is timed."""
        due = [self._pacer.due] if self._pacer.due is not None else []
        if self._phase is Phase.TRAINING and self._round is not None:
            timed = self._secagg.next_deadline() if self._secagg else self._round.deadline
            due += [timed] if timed is not None else []
        return min(due, default=None)

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
            case PartialArrived(aggregator=aggregator, payload=payload):
                return self._on_partial(aggregator, payload, now)
            case SecAggArrived(agent=agent, payload=payload) if self._secagg is not None:
                return self._on_secagg(self._secagg.receive(agent, payload, now), now)
            case SecAggArrived(agent=agent):
                return [self._reject(agent, None, RejectReason.NO_ROUND, "run without secagg")]
            case Tick():
                return self._on_tick(now)
            case Evaluated(round_no=round_no, metrics=metrics):
                return self._on_evaluated(round_no, metrics, now)
            case StopRequested(reason=reason):
                return [] if self.finished else self._halt(reason, f"round {self._completed}", now)
            case _:
                assert_never(event)

    # --- event handlers ---------------------------------------------------------------

    def _on_connected(self, now: float) -> list[Action]:
        self._roster.recount()
        rs, stage = self._round, self._secagg
        live = [] if rs is None else [*rs.publishes, *(stage.retained.values() if stage else ())]
        return self._reconnected(live, now)

    def _on_presence(self, agent: str, payload: bytes, now: float) -> list[Action]:
        try:
            self._roster.apply(agent, payload)
        except WireError as exc:
            return [self._reject(agent, None, exc.reason, f"presence: {exc.detail}")]
        if self._phase is Phase.WAITING and self._enough():
            return self._open_round(now)
        if self._secagg and self._phase is Phase.TRAINING and agent not in self._roster.online:
            return [self._status(now), *self._on_secagg(self._secagg.drop(agent, now), now)]
        return self._status_soon(now)

    def _view(self) -> RunView:
        """The run as validation sees it; ``accepting`` only while a round takes updates."""
        rs = self._round
        return RunView(
            run=self._run, completed=self._completed,
            model_id=self._broadcast.version.model_id,
            current=rs.number if rs is not None and not self.finished else None,
            accepting=rs if rs is not None and self._phase is Phase.TRAINING else None,
            online=self._roster.online,
        )

    def _on_update(self, agent: str, payload: bytes, now: float) -> list[Action]:
        view, round_no = self._view(), self._round.number if self._round else None
        accepting = view.accepting
        if accepting is not None:
            accepting.bytes_up += len(payload)
        try:
            check = self._late.checker(view, agent, self.finished)
            taken = self._intake.take_checked(self._run, agent, payload, now, check)
        except WireError as exc:
            if exc.reason is RejectReason.UNKNOWN_AGENT:
                self._roster.missing(agent)
            return [self._reject(agent, round_no, exc.reason, exc.detail)]
        if taken is None:
            return []  # a chunk of an update still incomplete
        update, delta = taken
        if self._late.is_late(update, view, self.finished):  # carried to the next round
            self._late.carry(update, delta, view)
            self._roster.alive(agent)
            return [SaveCheckpoint(self.checkpoint()), self._status(now)]
        assert accepting is not None  # check_round refuses every update without one
        self._broadcast.answered(agent, update.model_id)
        if delta is None:
            accepting.declined.add(agent)
            if self._secagg is not None:
                return [self._status(now), *self._on_secagg(self._secagg.drop(agent, now), now)]
            return self._maybe_close(now) or self._status_soon(now)
        accepting.take_update(update, delta)
        self._roster.alive(agent)
        accepted = UpdateAccepted(agent, accepting.number, len(accepting.accepted),
                                  accepting.quorum)
        return [accepted, *(self._maybe_close(now) or self._status_soon(now))]

    def _on_partial(self, aggregator: str, payload: bytes, now: float) -> list[Action]:
        """Merge a partial aggregate or refuse it, and tell its aggregator which."""
        view, round_no = self._view(), self._round.number if self._round else None
        try:
            p, merger = admit_partial(self.config, view, aggregator, payload, self._model.size)
        except WireError as exc:
            told = verdict(self.config, view, aggregator, payload, round_no=round_no, refused=exc)
            return [self._reject(aggregator, round_no, exc.reason, f"partial: {exc.detail}"),
                    *(self._outbox.verdict(v) for v in told)]
        rs = view.accepting
        assert rs is not None  # admit_partial refuses every partial without one
        rs.take_partial(p, merger, len(payload))
        self._rejected_total.update(r.reason.value for r in p.rejected)
        self._roster.alive(*p.agents)
        merged = PartialMerged(aggregator, p.round, len(p.agents), len(rs.accepted), rs.quorum)
        told = verdict(self.config, view, aggregator, payload, round_no=rs.number)
        return [merged, *(self._outbox.verdict(v) for v in told),
                *(self._maybe_close(now) or self._status_soon(now))]

    def _on_tick(self, now: float) -> list[Action]:
        rs = self._round
        if self._secagg is not None and self._phase is Phase.TRAINING:
            return self._on_secagg(self._secagg.tick(now), now)
        if self._phase is not Phase.TRAINING or rs is None or now < rs.deadline:
            return self._status_due(now)
        if len(rs.accepted) >= self.config.min_replies:
            return self._close(ClosedBy.DEADLINE, now)
        return self._short_round(f"round {rs.number}: {len(rs.accepted)} of min_replies="
                                 f"{self.config.min_replies} updates by the deadline", now)

    def _on_secagg(self, step: SecAggStep, now: float) -> list[Action]:
        rs = self._round  # publish and count what the step says, then maybe close the round
        actions: list[Action] = [*step.publishes, *(self._reject(
            r.agent, rs.number if rs else None, r.reason, r.detail) for r in step.rejected)]
        if rs is None or self._phase is not Phase.TRAINING:
            return actions
        rs.bytes_up, rs.bytes_down = rs.bytes_up + step.bytes_up, rs.bytes_down + step.bytes_down
        if step.failed is not None:
            return actions + self._short_round(f"round {rs.number}: {step.failed}", now)
        if step.done is not None:
            rs.tally_secagg(step.done)
            return actions + self._close(step.done.closed_by, now, step.done.result.delta)
        return actions + ([self._status(now)] if step.progressed or step.rejected else [])

    def _on_evaluated(self, round_no: int, metrics: dict[str, float], now: float) -> list[Action]:
        rs = self._round
        if self._phase is not Phase.EVALUATING or rs is None or rs.number != round_no:
            return []  # an evaluation that no longer matters (e.g. stop requested meanwhile)
        return self._finish_round(metrics, now)

    # --- round lifecycle ----------------------------------------------------------------

    def _announce(self, rs: OpenRound, now: float) -> list[Action]:
        """Encode ``rs``'s announcement, count its bytes down, and report it."""
        stage = self._secagg
        secagg = stage.open(self._run, rs, self._roster.presences, now) if stage else None
        sent = self._outbox.announcement(
            run=self._run, round_no=rs.number, attempt=rs.attempt, deadline_s=rs.deadline_s,
            cohort=rs.cohort, version=self._broadcast.version, now=now, secagg=secagg,
            roll_call=self._roster.take_roll_call(),
        )
        rs.publishes, addressed = sent.publishes, rs.cohort - rs.accepted
        rs.bytes_down += self._broadcast.bytes_down(
            addressed, sent.whole_bytes, sent.delta_bytes, self._roster.presences)
        rs.raw_bytes_down += self._raw_update_bytes * len(addressed)
        rs.addressed += len(addressed)
        self._late.announced(rs, self._broadcast.version.model_id)
        opened = RoundOpened(rs.number, rs.attempt, len(rs.cohort), rs.quorum, rs.deadline_s)
        return [*sent.publishes, opened, self._status(now)]

    def _open_round(self, now: float) -> list[Action]:
        self._roster.recounting = False
        self._round = self._cohorts.open(
            self._completed + 1, self._eligible(), self._roster.presences, now,
            aggregator=self._model.aggregator,
        )
        self._fire(Trigger.OPEN if self._phase is Phase.WAITING else Trigger.NEXT)
        return self._announce(self._round, now)

    def _enough(self) -> bool:
        return self._cohorts.enough(self._roster, self.config.min_agents)

    def _eligible(self) -> frozenset[str]:
        return self._cohorts.eligible(self.agents_online, self._roster.presences)

    def _maybe_close(self, now: float) -> list[Action]:
        rs = self._round
        assert rs is not None
        if len(rs.accepted) >= rs.quorum:
            return self._close(ClosedBy.QUORUM, now)
        if rs.cohort <= rs.answered and len(rs.accepted) >= self.config.min_replies:
            return self._close(ClosedBy.ALL_REPLIED, now)
        return []

    def _short_round(self, why: str, now: float) -> list[Action]:
        """The deadline passed and the round cannot close: retry it or stop, saying why."""
        rs = self._round
        assert rs is not None
        if self.config.on_short_round == "retry" and rs.attempt < self.config.max_retries:
            self._message = f"{why}; retry {rs.attempt + 1} of {self.config.max_retries}"
            self._cohorts.retry(rs, self._eligible(), self._roster.presences, now)
            self._fire(Trigger.RETRY)
            return self._announce(rs, now)
        tries = f" after {rs.attempt} retries" if rs.attempt else ""
        return self._end(Trigger.FAIL, f"{why}{tries}; stopping", now)

    def _close(self, closed_by: ClosedBy, now: float, mean: Weights | None = None) -> list[Action]:
        rs = self._round  # ``mean``: SecAgg's mean delta, in place of the aggregator's
        assert rs is not None
        try:
            self._late.fold(rs)
            delta = mean if mean is not None else rs.aggregator.result().delta
            rs.new_weights, rs.new_opt_state = self._model.step(delta)
        except AggregationError as exc:
            if closed_by is not ClosedBy.DEADLINE:
                return []  # keep gathering: more updates may come before the deadline
            return self._short_round(f"round {rs.number}: {exc}", now)
        rs.closed_by = closed_by
        self._message = ""  # a retry's reason no longer applies
        if not self.config.evaluate:
            return self._finish_round({}, now)
        self._fire(Trigger.EVALUATE)
        return [self._status(now), Evaluate(rs.number, rs.new_weights)]

    def _finish_round(self, evaluation: dict[str, float], now: float) -> list[Action]:
        rs = self._round
        assert rs is not None and rs.new_weights is not None and rs.new_opt_state is not None
        self._model.commit(rs.new_weights, rs.new_opt_state)
        self._broadcast.advance(rs.new_weights, rs.number)
        self._completed = rs.number
        metrics = dataclasses.replace(rs.metrics(
            job=self.config.job, run=self._run, evaluation=evaluation,
            raw_update_bytes=self._raw_update_bytes, duration_s=now - rs.opened_at,
            at=self._outbox.wall(now), epsilon=self._model.record_privacy(rs.sampling_rate),
        ), staleness=self._late.closed(rs))
        self._history.append(metrics)
        # Checkpoint first: a round whose metrics anyone has seen survives a crash.
        actions: list[Action] = [SaveCheckpoint(self.checkpoint()),
                                 self._outbox.metrics(metrics), RoundClosed(metrics)]
        why = stop_reason(self.config, self._history)
        if why is not None:
            return actions + self._end(Trigger.FINISH, why, now)
        if self._roster.recounting and not self._enough():
            self._fire(Trigger.WAIT)  # the next round opens on enough presences
            self._round = None
            return [*actions, self._status(now)]
        return actions + self._open_round(now)

    # --- outputs ---------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The state to resume from: the model after the last completed round."""
        ckpt = self._model.checkpoint(run=self._run, completed=self._completed,
                                      history=tuple(self._history), rejected=self._rejected_total,
                                      broadcast=self._broadcast.state())
        return dataclasses.replace(ckpt, buffer=self._late.pending, live=self._late.live())

    def _final_model(self, now: float) -> list[Action]:
        final = self._outbox.final_model(
            run=self._run, completed=self._completed, version=self._broadcast.version, now=now
        )
        return list(final.publishes)

    def _status(self, now: float) -> Publish:
        self._pacer.sent(now)
        return self._outbox.status(
            run=self._run, phase=self._phase, last_round=self._round, completed=self._completed,
            agents_online=len(self._roster.online), rejected=self._rejected_total,
            message=self._message, now=now,
        )

    def _reject(self, agent: str | None, round_no: int | None, reason: RejectReason, detail: str
                ) -> MessageRejected:
        self._rejected_total[reason.value] += 1
        if self._round is not None and self._phase is Phase.TRAINING:
            self._round.rejected[reason.value] += 1
        return MessageRejected(agent, round_no, reason, detail)

    def _fire(self, trigger: Trigger) -> None:
        self._phase = next_phase(self._phase, trigger)

