"""One MQTT connection kept up for an owner thread: the coordinator's, an agent's, a monitor's.

What it adds to a paho client, so that no adapter depends on the broker's luck:

- MQTT 5 first, and MQTT 3.1.1 when the broker refuses 5: a CONNACK "unsupported
  protocol version" (NATS), or the connection closed before any CONNACK (RabbitMQ).
  The client is rebuilt for 3.1.1 once and stays there.
- Messages go to an :class:`~transport.inbox.Inbox` bounded in bytes and are
  acknowledged (PUBACK, paho's manual acknowledgement) only when the owner calls
  :meth:`Link.done` after handling them: an acknowledged message was handled.
- Reconnects wait a jittered, doubling delay (:class:`~transport.backoff.Backoff`).
- A publish larger than the broker's MQTT 5 Maximum Packet Size (from CONNACK) is
  refused here with :class:`PacketTooLargeError`, saying which ``--max-payload`` fits;
  without that number (MQTT 3.1.1), repeated disconnects right after a large
  publish end in a refusal with the same hint instead of reconnecting for ever.
- :meth:`Link.close` can end the broker-side session (a finished job leaves none).

paho's callbacks run on its network thread and only hand off: to the inbox, or to
the owner's ``on_connected``/``on_refused`` (which must only hand off too).
``on_connected`` is called once the broker has acknowledged the subscriptions made on
connecting, so that whatever the owner then asks for (a roll call, its presence) is
answered while it listens.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from protocol import Publish
from transport.backoff import Backoff
from transport.connection import (
    BrokerURL,
    Session,
    connect,
    explain_connect_failure,
    explain_disconnect,
    make_client,
    refused_for_good,
)
from transport.inbox import Inbox

log = logging.getLogger("fedmq.transport")

#: publishes this large are watched: a broker that drops the connection right after
#: them again and again probably caps packets below their size
LARGE_PUBLISH_BYTES = 64 * 1024
#: ... this many times in a row, and the link gives up with a hint
SUSPECT_LOSSES = 3
#: MQTT fixed header, topic and properties around a payload, for the --max-payload hint
PACKET_HEADROOM = 1024
#: how long close() waits for the last publish, and a 3.1.1 session clean-up, to finish
CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Received:
    """A message from the broker; hand it back to :meth:`Link.done` once handled."""

    topic: str
    payload: bytes
    retained: bool
    mid: int
    qos: int
    #: which connection delivered it: only that connection may acknowledge it
    generation: int


class PacketTooLargeError(RuntimeError):
    """A publish the broker would refuse for its size; the message says what to do."""


def payload_hint(limit: int) -> str:
    """The ``--max-payload`` that fits packets of ``limit`` bytes, as a flag value."""
    fits = max(limit - PACKET_HEADROOM, 1024) // 1024
    return f"{fits}k"


def refuses_mqtt5(reason_code: object) -> bool:
    """Whether a CONNACK refusal means "this broker does not speak MQTT 5"."""
    return "unsupported protocol version" in str(reason_code).lower()


class Link:
    """A paho client for ``session`` on ``broker``, delivering into ``inbox``."""

    def __init__(
        self,
        broker: BrokerURL,
        session: Session,
        inbox: Inbox[Any],
        *,
        subscriptions: Callable[[], Sequence[tuple[str, int]]],
        on_connected: Callable[[], None],
        on_refused: Callable[[str], None],
        on_subscribed: Callable[[list[str]], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        will: Publish | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._broker = broker
        self._session = session
        self._inbox = inbox
        self._subscriptions = subscriptions
        self._on_connected = on_connected
        self._on_refused = on_refused
        self._on_subscribed = on_subscribed
        #: the mid of the subscriptions made on connecting, until the broker acknowledges them
        self._connect_subscription: int | None = None
        self._on_lost = on_lost
        self._will = will
        self._backoff = backoff or Backoff()
        self._lock = threading.Lock()
        self._mqtt5 = session.mqtt5
        self._closing = threading.Event()
        self._awaiting_connack = False
        self._generation = 0
        self._last: mqtt.MQTTMessageInfo | None = None
        #: the broker's MQTT 5 Maximum Packet Size, if its CONNACK named one
        self.max_packet: int | None = None
        #: large publishes sent, until acknowledged: (paho's handle, topic, size)
        self._large: list[tuple[mqtt.MQTTMessageInfo, str, int]] = []
        self._suspect = 0
        self._up_since: float | None = None
        self._client = self._build()

    @property
    def mqtt5(self) -> bool:
        """Whether the link speaks MQTT 5 (False after falling back to 3.1.1)."""
        return self._mqtt5

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def _build(self) -> mqtt.Client:
        client = make_client(self._broker, self._current_session(), will=self._will)
        client.manual_ack_set(True)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    def _current_session(self) -> Session:
        return dataclasses.replace(self._session, mqtt5=self._mqtt5)

    def start(self) -> None:
        """Connect in the background; paho's thread reconnects after every loss."""
        connect(self._client, self._broker, self._current_session())

    # --- paho callbacks (its network thread) -------------------------------------------------

    def _on_pre_connect(self, _c: mqtt.Client, _u: Any) -> None:
        self._awaiting_connack = True

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, code: Any, props: Any) -> None:
        self._awaiting_connack = False
        if code.is_failure:
            if self._mqtt5 and refuses_mqtt5(code):
                self._fall_back(client, f"CONNACK {code}")
                return
            why = refused_for_good(code)
            log.warning("connection to %s refused: %s", self._broker, code)
            if why is not None:
                self._on_refused(why)
            return
        self._backoff.reset()
        self._up_since = time.monotonic()
        self._generation += 1
        self.max_packet = getattr(props, "MaximumPacketSize", None) if self._mqtt5 else None
        subscriptions = list(self._subscriptions())
        if not subscriptions:
            self._on_connected()
            return
        # Connected is told once the broker has acknowledged the subscriptions: a roll call
        # or a presence sent before then could be answered before we listen for the answers.
        _result, self._connect_subscription = client.subscribe(subscriptions)

    def _on_connect_fail(self, client: mqtt.Client, _u: Any) -> None:
        # paho calls this inside its ``except OSError``: the error is the one in flight
        log.warning("%s: %s; retrying", self._broker, explain_connect_failure(sys.exc_info()[1]))
        self._awaiting_connack = False
        self._delay(client)

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        if self._closing.is_set():
            return
        if self._awaiting_connack and self._mqtt5:
            self._awaiting_connack = False
            self._fall_back(client, "the connection closed before any CONNACK")
            return
        self._awaiting_connack = False
        pending = [(topic, size) for info, topic, size in list(self._large)
                   if not info.is_published()]
        if pending:
            topic, size = max(pending, key=lambda ts: ts[1])
            self._suspect += 1
            if self._suspect >= SUSPECT_LOSSES:
                self._on_refused(
                    f"the broker closed the connection {self._suspect} times right after a "
                    f"publish of {size} bytes to {topic}: it probably refuses packets that "
                    "large; pass --max-payload below its cap (e.g. 128k; docs/BROKERS.md)"
                )
                return
        up_s = None if self._up_since is None else time.monotonic() - self._up_since
        log.warning("disconnected from %s (%s); reconnecting", self._broker,
                    explain_disconnect(code, self._session.client_id, up_s))
        if self._on_lost is not None:
            self._on_lost(str(code))
        self._delay(client)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        payload = bytes(message.payload)
        received = Received(message.topic, payload, bool(message.retain), message.mid,
                            message.qos, self._generation)
        self._inbox.push(received, len(payload))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, code: Any, _p: Any) -> None:
        if getattr(code, "is_failure", False):  # MQTT 5 only: 3.1.1 has no reason codes
            log.warning("%s: the broker refused publish %d: %s: its ACL does not let %s "
                        "publish there (docs/SECURITY.md)", self._broker, mid, code,
                        self._broker.username)
        if any(info.mid == mid for info, _, _ in list(self._large)):
            self._suspect = 0  # the broker took a large publish: it does not refuse them

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        if mid == self._connect_subscription:
            self._connect_subscription = None
            self._on_connected()
        if self._on_subscribed is not None:
            self._on_subscribed([str(c) for c in codes if getattr(c, "is_failure", False)])

    def _delay(self, client: mqtt.Client) -> None:
        """Set paho's next reconnect delay: ours, jittered (paho's own doubles in step)."""
        delay = self._backoff.next_delay()
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]  # floats work

    def _fall_back(self, old: mqtt.Client, why: str) -> None:
        """The broker does not speak MQTT 5: rebuild the client for 3.1.1, off this thread."""
        log.warning("%s: %s to an MQTT 5 CONNECT; falling back to MQTT 3.1.1", self._broker, why)
        self._mqtt5 = False
        old.disconnect()  # from its own callback: its loop stops instead of reconnecting

        def replace() -> None:
            old.loop_stop()
            with self._lock:
                if self._closing.is_set():
                    return
                self._client = self._build()
                self.start()

        threading.Thread(target=replace, name="mqtt-fallback", daemon=True).start()

    # --- the owner's thread -------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, retain: bool) -> mqtt.MQTTMessageInfo:
        """Publish at QoS 1 (queued by paho while disconnected).

        Raises:
            PacketTooLargeError: if the broker's CONNACK named a Maximum Packet Size this exceeds.
        """
        limit = self.max_packet
        size = len(payload) + len(topic.encode()) + 16  # header, topic length, id, properties
        if limit is not None and size > limit:
            raise PacketTooLargeError(
                f"a {len(payload)}-byte publish to {topic} exceeds the broker's maximum "
                f"packet size of {limit} bytes (from its CONNACK): pass --max-payload "
                f"{payload_hint(limit)} so that larger messages travel in chunks"
            )
        with self._lock:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        if len(payload) >= LARGE_PUBLISH_BYTES:
            self._large = [e for e in self._large if not e[0].is_published()]
            self._large.append((info, topic, len(payload)))
        self._last = info
        return info

    def subscribe(self, topics: Sequence[tuple[str, int]]) -> None:
        """Subscribe now (a reconnect renews only ``subscriptions``)."""
        if topics:
            with self._lock:
                self._client.subscribe(list(topics))

    def unsubscribe(self, topics: Sequence[str]) -> None:
        """Unsubscribe now from these topic filters."""
        if topics:
            with self._lock:
                self._client.unsubscribe(list(topics))

    def done(self, received: Received) -> None:
        """``received`` is handled: acknowledge it to the broker, make room in the inbox."""
        if received.qos > 0 and received.generation == self._generation:
            with self._lock:
                self._client.ack(received.mid, received.qos)
        self._inbox.release(len(received.payload))

    def close(self, *, end_session: bool = False) -> None:
        """Flush the last publish, disconnect, stop paho's thread.

        ``end_session``: also discard the broker-side session (its subscriptions and the
        messages queued for it, e.g. RabbitMQ's durable queue): MQTT 5 says so in its
        DISCONNECT; for 3.1.1 a clean-session connect with the same client id follows.
        """
        self._closing.set()
        self._inbox.close()  # a paho thread waiting for room must not block the join below
        last = self._last
        if last is not None and self._client.is_connected():
            try:
                last.wait_for_publish(timeout=CLOSE_TIMEOUT_S)
            except (RuntimeError, ValueError) as exc:
                log.warning("final publish not confirmed: %s", exc)
        with self._lock:
            client = self._client
        properties = None
        if end_session and self._mqtt5:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        client.disconnect(properties=properties)
        client.loop_stop()
        if end_session and not self._mqtt5 and self._session.persistent:
            self._clean_311_session()

    def _clean_311_session(self) -> None:
        """Connect once with a clean session under our client id: the broker drops ours."""
        session = dataclasses.replace(self._session, mqtt5=False, persistent=False)
        client = make_client(self._broker, session)
        acked = threading.Event()
        client.on_connect = lambda *_: acked.set()
        try:
            client.connect(self._broker.host, self._broker.port, keepalive=10)
            client.loop_start()
            if not acked.wait(CLOSE_TIMEOUT_S):
                log.warning("%s: the session clean-up got no CONNACK", self._broker)
            client.disconnect()
        except OSError as exc:
            log.warning("%s: cannot clean up the session: %s", self._broker, exc)
        finally:
            client.loop_stop()

