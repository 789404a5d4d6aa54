"""The coordinator's paho adapter: the only coordinator module that touches MQTT or a clock.

The :class:`~transport.link.Link` hands what arrives to a queue bounded in bytes
(``--max-inbox-bytes``: beyond it the broker waits); a message is acknowledged to
the broker only once the round machine has handled it. The thread that calls
:meth:`CoordinatorNode.run` owns the round machine: it decodes nothing itself,
feeds events in, and carries out the actions that come back (publish, evaluate,
checkpoint) in order.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from typing_extensions import assert_never

from coordinator.buffered import BufferedRounds
from coordinator.checkpoint import save_checkpoint
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
    Stop,
    StopRequested,
    Tick,
    UpdateAccepted,
    UpdateArrived,
)
from coordinator.rounds import Rounds
from protocol import Phase, Publish, TopicKind, Weights, WireError, agent_topic_level
from transport.connection import BrokerURL, Session
from transport.inbox import Inbox
from transport.link import Link, PacketTooLargeError, Received

log = logging.getLogger("fedmq.coordinator")

Evaluator = Callable[[Weights], dict[str, float]]

@dataclass(frozen=True, slots=True)
class _Refused:
    why: str


class CoordinatorNode:
    """Runs a :class:`Rounds` (or buffered) machine against a broker until the run ends."""

    def __init__(
        self,
        rounds: Rounds | BufferedRounds,
        broker: BrokerURL,
        session: Session,
        *,
        evaluator: Evaluator | None = None,
        checkpoint_path: Path | None = None,
        on_action: Callable[[Action], None] | None = None,
        queue_size: int = 100_000,
        take_updates: bool = True,
    ) -> None:
        """``take_updates`` False: ingest workers take the updates (docs/SCALE.md) and this
        coordinator reads only their partial aggregates."""
        self.rounds = rounds
        self._evaluator = evaluator
        self._checkpoint_path = checkpoint_path
        self._on_action = on_action
        self._inbox: Inbox[Received | _Refused | Event] = Inbox(
            queue_size, "coordinator", max_bytes=rounds.config.max_inbox_bytes
        )
        self.bugs = 0
        topics = rounds.topics
        secagg = [(topics.all_secagg_up, 1)] if rounds.config.secagg is not None else []
        updates = [(topics.all_updates, 1)] if take_updates else []
        self._link = Link(
            broker,
            session,
            self._inbox,
            subscriptions=lambda: [*updates, (topics.all_presence, 1),
                                   (topics.all_partials, 1), *secagg],
            on_connected=lambda: self._put(BrokerConnected()),
            on_refused=lambda why: self._put(_Refused(why)),
        )

    def _put(self, item: _Refused | Event) -> None:
        self._inbox.offer(item)

    @property
    def dropped(self) -> int:
        """Notices lost because the inbound queue was full (messages are never dropped)."""
        return self._inbox.dropped

    @property
    def link(self) -> Link:
        """The connection (its MQTT version, the broker's packet cap)."""
        return self._link

    # --- the owning thread -------------------------------------------------------------------

    def stop(self, reason: str = "operator") -> None:
        """Ask the coordinator to stop (the run stays resumable); safe from any thread or a
        signal handler."""
        self._put(StopRequested(reason))

    def run(self) -> Phase:
        """Connect, drive the run to its end (or a stop), flush and disconnect. Returns the
        final phase.

        Raises:
            ConnectionRefusedError: when the broker refuses us for good.
            PacketTooLargeError: when a model is too large for the broker (set max_payload).
        """
        self._link.start()
        try:
            while not self.rounds.finished:
                item = self._next(self.rounds.next_deadline())
                if isinstance(item, _Refused):
                    raise ConnectionRefusedError(item.why)
                if isinstance(item, Received):
                    event = self._to_event(item)
                    if event is not None:
                        self._feed(event)
                    self._link.done(item)  # handled: now the broker may forget it
                else:
                    self._feed(item)
                deadline = self.rounds.next_deadline()
                if deadline is not None and time.monotonic() >= deadline:
                    self._feed(Tick())
        finally:
            # A run that ended leaves no session behind; a stopped one keeps it for --resume.
            self._link.close(end_session=self.rounds.ended)
        return self.rounds.phase

    def _next(self, deadline: float | None) -> Received | _Refused | Event:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        item = self._inbox.get(timeout)
        return Tick() if item is None else item

    def _to_event(self, item: Received) -> Event | None:
        try:  # the machine checks the agent level itself, so a bad one is counted
            kind, agent = agent_topic_level(item.topic, self.rounds.config.job)
        except WireError as exc:  # not from our subscriptions: a broker's mistake
            log.warning("ignored message on %s: %s", item.topic[:200], exc)
            return None
        if kind is TopicKind.UPDATE:
            return UpdateArrived(agent, item.payload)
        if kind is TopicKind.SECAGG:
            return SecAggArrived(agent, item.payload)
        if kind is TopicKind.PARTIAL:
            return PartialArrived(agent, item.payload)
        return PresenceArrived(agent, item.payload, item.retained)

    def _feed(self, event: Event) -> None:
        pending: deque[Action] = deque(self.rounds.handle(event, time.monotonic()))
        while pending:
            action = pending.popleft()
            try:
                follow_up = self._carry_out(action)
            except PacketTooLargeError:
                raise  # no run can go on: the broker refuses the model itself
            except Exception:  # a bug in an action must not kill the run; count it
                self.bugs += 1
                log.error(
                    "bug while carrying out %s:\n%s", type(action).__name__, traceback.format_exc()
                )
                continue
            if follow_up is not None:
                pending.extend(self.rounds.handle(follow_up, time.monotonic()))
            if self._on_action is not None:
                self._on_action(action)

    def _carry_out(self, action: Action) -> Event | None:
        match action:
            case Publish(topic=topic, payload=payload, retain=retain):
                self._link.publish(topic, payload, retain)
            case Evaluate(round_no=round_no, weights=weights):
                metrics = self._evaluator(weights) if self._evaluator is not None else {}
                return Evaluated(round_no, metrics)
            case SaveCheckpoint(checkpoint=ckpt):
                if self._checkpoint_path is not None:
                    save_checkpoint(self._checkpoint_path, ckpt)
            case MessageRejected(agent=agent, round_no=round_no, reason=reason, detail=detail):
                log.warning(
                    "rejected from %s (round %s): %s: %s", agent, round_no, reason.value, detail
                )
            case RoundOpened() | UpdateAccepted() | PartialMerged() | RoundClosed():
                pass  # progress, for on_action observers
            case Stop(phase=phase, message=message):
                level = logging.ERROR if phase is Phase.FAILED else logging.INFO
                log.log(level, "run %s: %s", phase.value, message)
            case _:
                assert_never(action)
        return None
