"""The coordinator's paho adapter: the only coordinator module that touches MQTT or a clock.

paho callbacks run on paho's network thread and only hand messages off to a
bounded queue. The thread that calls :meth:`CoordinatorNode.run` owns the round
machine: it decodes nothing itself, feeds events in, and carries out the
actions that come back (publish, evaluate, checkpoint) in order.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
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
from transport.connection import (
    BrokerURL,
    Session,
    connect,
    explain_disconnect,
    make_client,
    refused_for_good,
)
from transport.inbox import Inbox

log = logging.getLogger("fedmq.coordinator")

Evaluator = Callable[[Weights], dict[str, float]]

#: how long to wait for the final publishes to reach the broker when stopping
FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    payload: bytes


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
        self._take_updates = take_updates
        self._broker = broker
        self._session = session
        self._evaluator = evaluator
        self._checkpoint_path = checkpoint_path
        self._on_action = on_action
        self._inbox: Inbox[_Inbound | _Refused | Event] = Inbox(
            queue_size, "coordinator", max_bytes=rounds.config.max_inbox_bytes
        )
        self.bugs = 0
        self._client = make_client(broker, session)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._last_publish: mqtt.MQTTMessageInfo | None = None
        self._stopped = threading.Event()
        self._connected_at: float | None = None

    # --- paho callbacks: hand off and return ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            why = refused_for_good(reason_code)
            log.warning("connection to %s refused: %s", self._broker, reason_code)
            if why is not None:
                self._put(_Refused(why))
            return
        self._connected_at = time.monotonic()
        topics = self.rounds.topics
        secagg = [(topics.all_secagg_up, 1)] if self.rounds.config.secagg is not None else []
        updates = [(topics.all_updates, 1)] if self._take_updates else []
        client.subscribe([*updates, (topics.all_presence, 1), (topics.all_partials, 1), *secagg])
        self._put(BrokerConnected())

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        held = None if self._connected_at is None else time.monotonic() - self._connected_at
        self._connected_at = None
        if not self._stopped.is_set():
            why = explain_disconnect(reason_code, self._session.client_id, held)
            log.warning("disconnected from %s (%s); reconnecting", self._broker, why)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        self._inbox.offer(_Inbound(message.topic, payload), size=len(payload))

    def _put(self, item: _Refused | Event) -> None:
        self._inbox.offer(item)

    @property
    def dropped(self) -> int:
        """Messages lost because the inbound queue was full."""
        return self._inbox.dropped

    # --- the owning thread -------------------------------------------------------------------

    def stop(self, reason: str = "operator") -> None:
        """Ask the run to end; safe from any thread or a signal handler."""
        self._put(StopRequested(reason))

    def run(self) -> Phase:
        """Connect, drive the run to its end, flush and disconnect. Returns the final phase."""
        connect(self._client, self._broker, self._session)
        try:
            while not self.rounds.finished:
                item = self._next(self.rounds.next_deadline())
                if isinstance(item, _Refused):
                    raise ConnectionRefusedError(item.why)
                event = self._to_event(item)
                if event is not None:
                    self._feed(event)
                deadline = self.rounds.next_deadline()
                if deadline is not None and time.monotonic() >= deadline:
                    self._feed(Tick())
        finally:
            self._flush_and_disconnect()
        return self.rounds.phase

    def _next(self, deadline: float | None) -> _Inbound | _Refused | Event:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        item = self._inbox.get(timeout)
        return Tick() if item is None else item

    def _to_event(self, item: _Inbound | Event) -> Event | None:
        if not isinstance(item, _Inbound):
            return item
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
        return PresenceArrived(agent, item.payload)

    def _feed(self, event: Event) -> None:
        pending: deque[Action] = deque(self.rounds.handle(event, time.monotonic()))
        while pending:
            action = pending.popleft()
            try:
                follow_up = self._carry_out(action)
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
                self._last_publish = self._client.publish(topic, payload, qos=1, retain=retain)
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
                level = logging.INFO if phase is Phase.DONE else logging.ERROR
                log.log(level, "run %s: %s", phase.value, message)
            case _:
                assert_never(action)
        return None

    def _flush_and_disconnect(self) -> None:
        self._stopped.set()
        if self._last_publish is not None and self._client.is_connected():
            try:
                self._last_publish.wait_for_publish(timeout=FLUSH_TIMEOUT_S)
            except (RuntimeError, ValueError) as exc:
                log.warning("final publish not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
