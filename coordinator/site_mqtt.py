"""The site aggregator's and ingest worker's paho adapter: updates below, partials above.

Two sessions: on the site broker it subscribes to the job's model (retained, bridged
down from the central broker), its agents' presence and their updates (an ingest
worker: the central broker, its update topics through the shared subscription
``$share/{group}/...``); on the central broker it publishes partial aggregates and
reads the coordinator's verdicts on them. Callbacks hand messages to a
bounded inbox; the thread that calls :meth:`SiteNode.run` owns the
:class:`~coordinator.site.SiteAggregator` and carries out its actions.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from typing_extensions import assert_never

from coordinator.events import MessageRejected, PresenceArrived, Tick, UpdateArrived
from coordinator.site import (
    ModelSeen,
    PartialSent,
    SiteAction,
    SiteAggregator,
    SiteEvent,
    VerdictSeen,
)
from protocol import Publish, TopicKind, WireError, parse_topic
from transport.connection import BrokerURL, Session, connect, make_client
from transport.inbox import Inbox

log = logging.getLogger("fedmq.aggregator")

#: how long to wait for the last partial to reach the central broker when stopping
FLUSH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Stop:
    reason: str


class SiteNode:
    """Runs a :class:`SiteAggregator` between a site broker and the central one."""

    def __init__(self, core: SiteAggregator, local: BrokerURL, upstream: BrokerURL, *,
                 mqtt5: bool = True, on_action: Callable[[SiteAction], None] | None = None,
                 queue_size: int = 100_000, shared_group: str | None = None) -> None:
        self.core = core
        self._updates = core.topics.all_updates
        if shared_group is not None:  # MQTT 5 shared subscription: each update to one member
            self._updates = f"$share/{shared_group}/{self._updates}"
        self._local, self._upstream = local, upstream
        self._on_action = on_action
        self._inbox: Inbox[_Inbound | _Stop] = Inbox(queue_size, "aggregator")
        name = f"fedmq-{core.config.job}-site-{core.site}"
        self._local_session = Session(client_id=f"{name}-local", mqtt5=mqtt5)
        self._upstream_session = Session(client_id=f"{name}-up", mqtt5=mqtt5)
        self._below = make_client(local, self._local_session)
        self._below.on_connect = self._on_local_connect
        self._below.on_message = self._on_message
        #: set once the site broker has confirmed the subscriptions (updates are not retained)
        self.subscribed = threading.Event()
        self._below.on_subscribe = lambda *_: self.subscribed.set()
        self._above = make_client(upstream, self._upstream_session)
        self._above.on_connect = self._on_upstream_connect
        self._above.on_message = self._on_message
        self._last: mqtt.MQTTMessageInfo | None = None
        self.bugs = 0
        self.sent: list[PartialSent] = []
        #: notified after every event the core has taken, for observers waiting on its state
        self.progress = threading.Condition()

    def _on_local_connect(self, client: mqtt.Client, _u: Any, _f: Any, code: Any, _p: Any
                          ) -> None:
        if code.is_failure:
            log.warning("site broker %s refused: %s", self._local, code)
            return
        topics = self.core.topics
        client.subscribe([(topics.model, 1), (topics.all_presence, 1), (self._updates, 1)])

    def _on_upstream_connect(self, client: mqtt.Client, _u: Any, _f: Any, code: Any, _p: Any
                             ) -> None:
        if code.is_failure:
            log.warning("central broker %s refused: %s", self._upstream, code)
            return
        client.subscribe(self.core.topics.verdict(self.core.site), qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.offer(_Inbound(message.topic, bytes(message.payload)))

    def stop(self, reason: str = "operator") -> None:
        """Ask the node to end; safe from any thread or a signal handler."""
        self._inbox.put(_Stop(reason))

    def run(self) -> None:
        """Connect both sessions and serve until the run ends or :meth:`stop`."""
        connect(self._above, self._upstream, self._upstream_session)
        connect(self._below, self._local, self._local_session)
        try:
            while not self.core.done:
                deadline = self.core.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                item = self._inbox.get(timeout)
                if isinstance(item, _Stop):
                    log.info("site %s stopping: %s", self.core.site, item.reason)
                    break
                event = self._to_event(item) if item is not None else Tick()
                if event is not None:
                    self._feed(event)
                deadline = self.core.next_deadline()
                if deadline is not None and time.monotonic() >= deadline:
                    self._feed(Tick())
        finally:
            self._flush()

    def _to_event(self, item: _Inbound) -> SiteEvent | None:
        try:
            ref = parse_topic(item.topic)
        except WireError as exc:
            log.warning("ignored message on %s: %s", item.topic, exc)
            return None
        if ref.kind is TopicKind.MODEL and ref.chunk is None:
            return ModelSeen(item.payload)
        if ref.kind is TopicKind.UPDATE and ref.agent is not None:
            return UpdateArrived(ref.agent, item.payload)
        if ref.kind is TopicKind.AGENTS and ref.agent is not None:
            return PresenceArrived(ref.agent, item.payload)
        if ref.kind is TopicKind.VERDICT and ref.agent == self.core.site:
            return VerdictSeen(item.payload)
        return None

    def _feed(self, event: SiteEvent) -> None:
        actions = self.core.handle(event, time.monotonic())
        with self.progress:
            self.progress.notify_all()
        for action in actions:
            try:
                self._carry_out(action)
            except Exception:  # a bug in an action must not stop the site; count it
                self.bugs += 1
                log.error("bug carrying out %s:\n%s", type(action).__name__,
                          traceback.format_exc())
            if self._on_action is not None:
                self._on_action(action)

    def _carry_out(self, action: SiteAction) -> None:
        match action:
            case Publish(topic=topic, payload=payload, retain=retain):
                self._last = self._above.publish(topic, payload, qos=1, retain=retain)
            case PartialSent(round_no=round_no, contributors=contributors, declined=declined):
                self.sent.append(action)
                log.info("site %s: round %d partial sent: %d updates, %d declines",
                         self.core.site, round_no, contributors, declined)
            case MessageRejected(agent=agent, round_no=round_no, reason=reason, detail=detail):
                log.warning("rejected from %s (round %s): %s: %s", agent, round_no,
                            reason.value, detail)
            case _:
                assert_never(action)

    def _flush(self) -> None:
        if self._last is not None and self._above.is_connected():
            try:
                self._last.wait_for_publish(timeout=FLUSH_TIMEOUT_S)
            except (RuntimeError, ValueError) as exc:
                log.warning("last partial not confirmed: %s", exc)
        for client in (self._below, self._above):
            client.disconnect()
            client.loop_stop()

