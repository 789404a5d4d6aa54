"""The transport's link against each broker: a message is acknowledged only once handled,
so what a crashed coordinator had taken but not handled comes back to its session."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedmq_tools.brokers import PrivateBroker
from transport.connection import BrokerURL, Session
from transport.inbox import Inbox
from transport.link import Link, Received

pytestmark = [pytest.mark.integration, pytest.mark.brokers]


def link(url: str, client_id: str, topic: str, *, resume: bool) -> tuple[Link, Inbox[object]]:
    inbox: Inbox[object] = Inbox(1000, client_id)
    up = threading.Event()
    session = Session(client_id=client_id, persistent=True, resume_session=resume)
    lnk = Link(BrokerURL.parse(url), session, inbox, subscriptions=lambda: [(topic, 1)],
               on_connected=lambda: None, on_refused=lambda why: None,
               on_subscribed=lambda _refused: up.set())
    lnk.start()
    assert up.wait(30), "no SUBACK"
    return lnk, inbox


def publish(url: str, topic: str, payloads: list[bytes]) -> None:
    broker = BrokerURL.parse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for payload in payloads:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def take(inbox: Inbox[object], n: int) -> list[Received]:
    got = []
    while len(got) < n:
        item = inbox.get(30)
        assert item is not None, f"only {len(got)} of {n} messages arrived"
        if isinstance(item, Received):
            got.append(item)
    return got


def test_what_was_taken_but_not_handled_is_delivered_again(any_broker: PrivateBroker) -> None:
    client_id, topic = f"link-{uuid.uuid4().hex[:8]}", f"fedmq/v1/link-{uuid.uuid4().hex[:6]}/x"
    first, inbox = link(any_broker.url, client_id, topic, resume=False)
    payloads = [f"m{k}".encode() for k in range(5)]
    publish(any_broker.url, topic, payloads)
    got = take(inbox, 5)
    assert [r.payload for r in got] == payloads
    for received in got[:2]:
        first.done(received)  # handled: acknowledged
    first.close()  # the process dies with three messages taken, not handled
    second, inbox = link(any_broker.url, client_id, topic, resume=True)
    again = take(inbox, 3)
    assert sorted(r.payload for r in again) == payloads[2:]
    for received in again:
        second.done(received)
    second.close(end_session=True)
