"""What an anonymous client of the demo broker can send the coordinator, and what it costs.

A real coordinator on a real Mosquitto (the project's mosquitto.conf); the test
publishes like any other client. Every refusal must be counted in the retained
status, and nothing bigger than the coordinator's bound may reach it. Waiting is
on the watcher's messages with timeouts, never a sleep.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from harness import CoordinatorThread, TopicWatcher
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import RoundConfig
from fedmq.broker import LocalBroker
from protocol import Phase, Presence, Status, Topics, decode_status, encode_presence

pytestmark = pytest.mark.integration


def publisher(broker: LocalBroker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    return client


def statuses(watcher: TopicWatcher) -> list[Status]:
    return [decode_status(p) for p in watcher.on("/status")]


def waiting_coordinator(broker: LocalBroker, job: str, **overrides: object) -> CoordinatorThread:
    settings: dict[str, object] = {"job": job, "task": "linreg", "rounds": 1, "min_agents": 5,
                                   "evaluate": False}
    settings.update(overrides)
    return CoordinatorThread(RoundConfig(**settings), broker.url).start()  # type: ignore[arg-type]


def test_a_bad_agent_id_in_a_topic_level_is_counted_as_malformed(broker: LocalBroker) -> None:
    job = "badtopics"
    watcher = TopicWatcher(broker.url, job)
    coordinator = waiting_coordinator(broker, job)
    client = publisher(broker)
    try:
        watcher.wait_for(lambda: bool(statuses(watcher)))
        base = f"fedmq/v1/{job}"
        for topic in (f"{base}/update/bad id", f"{base}/update/-x", f"{base}/agents/bad id"):
            client.publish(topic, b"{}", qos=1).wait_for_publish(10)
        # A valid presence after them makes the coordinator publish its status again.
        sentinel = encode_presence(Presence(agent="a0", online=True))
        client.publish(Topics(job).presence("a0"), sentinel, qos=1).wait_for_publish(10)
        watcher.wait_for(lambda: statuses(watcher)[-1].agents_online == 1)
        assert statuses(watcher)[-1].rejected == {"malformed": 3}
        assert statuses(watcher)[-1].phase is Phase.WAITING
    finally:
        client.disconnect()
        client.loop_stop()
        coordinator.node.stop("test over")
        coordinator.join()
        watcher.close()
