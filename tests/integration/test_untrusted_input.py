"""What an anonymous client of the demo broker can send the coordinator, and what it costs.

A real coordinator on a real Mosquitto (the project's mosquitto.conf); the test
publishes like any other client. Every refusal must be counted in the retained
status, and nothing bigger than the coordinator's bound may reach it. Waiting is
on the watcher's messages with timeouts, never a sleep.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from harness import TIMEOUT_S, CoordinatorThread, TopicWatcher, agent_fleet, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import Action, MessageRejected, RoundConfig, UpdateAccepted
from edge_agent.agent import AgentCore, Connected, ModelArrived, Train, TrainingDone
from edge_agent.trainer import TrainResult
from fedmq.broker import REPO_CONF, LocalBroker
from protocol import (
    Phase,
    Presence,
    Publish,
    RejectReason,
    Status,
    Topics,
    decode_model,
    decode_presence,
    decode_status,
    encode_presence,
)
from tests.needs import require_mosquitto

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


class ByHand:
    """An unsigned agent played by the test: it answers a round only when told."""

    def __init__(self, broker: LocalBroker, job: str, agent: str, watcher: TopicWatcher) -> None:
        self.core = AgentCore(job, agent, samples=10, trainer="test")
        self.client = publisher(broker)
        self.watcher = watcher
        self.topics = Topics(job)

    def send(self, actions: list[object]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.client.publish(action.topic, action.payload, qos=1,
                                    retain=action.retain).wait_for_publish(10)

    def answer(self, round_no: int) -> None:
        model = self.watcher.on("/model")[-1]
        (train,) = [a for a in self.core.handle(ModelArrived(model)) if isinstance(a, Train)]
        assert train.model.round == round_no
        result = TrainResult(dict(train.model.weights), 10)
        self.send(self.core.handle(TrainingDone(train.key, result, 0.0)))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_the_coordinator_no_longer_counts_announces_itself_again(
        broker: LocalBroker) -> None:
    """An anonymous client's retained `offline` drops agent-0 from the roster between rounds;
    its next update is refused, the next announcement calls the roll, and it is back."""
    job = "rollcall"
    topics = Topics(job)
    watcher = TopicWatcher(broker.url, job)
    accepted: list[tuple[str, int]] = []
    refused: list[tuple[str | None, RejectReason]] = []

    def record(action: Action) -> None:
        with watcher.cond:
            if isinstance(action, UpdateAccepted):
                accepted.append((action.agent, action.round_no))
            if isinstance(action, MessageRejected):
                refused.append((action.agent, action.reason))
            watcher.cond.notify_all()

    config = RoundConfig(job=job, task="linreg", rounds=4, min_agents=2, evaluate=False,
                         deadline_s=120.0)
    coordinator = CoordinatorThread(config, broker.url, on_action=record).start()
    by_hand = ByHand(broker, job, "agent-1", watcher)
    anonymous = publisher(broker)
    forged = encode_presence(Presence(agent="agent-0", online=False))
    try:
        # the coordinator counts live presence only: it listens (its roll call is out)
        # before the hand-driven agent announces itself, which answers no roll call
        watcher.wait_for(lambda: bool(watcher.on("/rollcall")))
        by_hand.send(by_hand.core.handle(Connected()))
        with agent_fleet(broker.url, job, "linreg", 1):  # agent-0, a real agent
            watcher.wait_for(lambda: ("agent-0", 1) in accepted)
            by_hand.answer(1)
            watcher.wait_for(lambda: ("agent-0", 2) in accepted)
            anonymous.publish(topics.presence("agent-0"), forged, qos=1,
                              retain=True).wait_for_publish(10)
            watcher.wait_for(lambda: statuses(watcher)[-1].agents_online == 1)
            by_hand.answer(2)  # round 3 opens without agent-0: its update is refused
            watcher.wait_for(lambda: refused == [("agent-0", RejectReason.UNKNOWN_AGENT)])
            by_hand.answer(3)  # round 4 names agent-0 in its roll call
            watcher.wait_for(lambda: ("agent-0", 4) in accepted)
            coordinator.join()
        rounds = {m.round: m for m in map(decode_model, watcher.on("/model")) if not m.done}
        assert [r for r, m in rounds.items() if "agent-0" in m.roll_call] == [4]
        # online, the forgery, online again at the roll call, offline when the run is done
        states = [decode_presence(p).online for p in watcher.on("/agents/agent-0")]
        assert states == [True, False, True, False]
        assert coordinator.node.rounds.phase is Phase.DONE
    finally:
        by_hand.close()
        anonymous.disconnect()
        anonymous.loop_stop()
        if coordinator.thread.is_alive():
            coordinator.node.stop("test over")
            coordinator.join()
        watcher.close()


# --- payload caps ---------------------------------------------------------------------------


class Recorder:
    """A coordinator's rejections, as its observers see them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.refused: list[tuple[str | None, RejectReason]] = []

    def __call__(self, action: Action) -> None:
        if isinstance(action, MessageRejected):
            with self.cond:
                self.refused.append((action.agent, action.reason))
                self.cond.notify_all()

    def wait_for(self, n: int) -> list[tuple[str | None, RejectReason]]:
        wait_until(lambda: len(self.refused) >= n, self.cond, TIMEOUT_S)
        return self.refused


def test_the_shipped_broker_config_refuses_a_payload_above_its_cap(broker: LocalBroker) -> None:
    """Any anonymous client used to be able to hand the coordinator 256 MiB at a time."""
    cap = next(int(line.split()[1]) for line in REPO_CONF.read_text().splitlines()
               if line.startswith("max_packet_size"))
    assert cap <= 16 * 2**20
    job = "capped"
    seen = Recorder()
    coordinator = CoordinatorThread(
        RoundConfig(job=job, task="linreg", rounds=1, min_agents=5, evaluate=False),
        broker.url, on_action=seen).start()
    flooder, outcome = publisher(broker), []

    def told(what: str) -> None:
        with seen.cond:
            outcome.append(what)
            seen.cond.notify_all()

    flooder.on_disconnect = lambda *_: told("disconnected")
    flooder.on_publish = lambda *_: told("acknowledged")
    other = publisher(broker)
    try:
        watcher = TopicWatcher(broker.url, job)
        watcher.wait_for(lambda: bool(statuses(watcher)))  # the coordinator is subscribed
        watcher.close()
        flooder.publish(Topics(job).update("a0"), bytes(cap + 2**20), qos=1)
        wait_until(lambda: bool(outcome), seen.cond, TIMEOUT_S)
        assert outcome[0] == "disconnected"  # the broker refused it: no PUBACK
        other.publish(Topics(job).update("a0"), b"sentinel", qos=1).wait_for_publish(10)
        assert seen.wait_for(1) == [("a0", RejectReason.MALFORMED)]  # the sentinel, alone
    finally:
        for client in (flooder, other):
            client.disconnect()
            client.loop_stop()
        coordinator.node.stop("test over")
        coordinator.join()


def test_the_coordinator_is_never_handed_more_than_it_accepts(tmp_path: Path) -> None:
    """Even a broker without a cap drops, for the coordinator, what it would refuse anyway:
    the coordinator tells it its maximum packet size (MQTT 5)."""
    conf = tmp_path / "uncapped.conf"
    conf.write_text("".join(line for line in REPO_CONF.read_text().splitlines(keepends=True)
                            if not line.startswith("max_packet_size")))
    require_mosquitto()
    job = "bounded"
    config = RoundConfig(job=job, task="linreg", rounds=1, min_agents=5, evaluate=False,
                         max_update_bytes=2**20)
    seen = Recorder()
    with LocalBroker(conf) as uncapped:
        coordinator = CoordinatorThread(config, uncapped.url, on_action=seen).start()
        client = publisher(uncapped)
        try:
            watcher = TopicWatcher(uncapped.url, job)
            watcher.wait_for(lambda: bool(statuses(watcher)))
            watcher.close()
            topic = Topics(job).update("a0")
            client.publish(topic, bytes(4 * 2**20), qos=1).wait_for_publish(10)
            client.publish(topic, b"sentinel", qos=1).wait_for_publish(10)
            assert seen.wait_for(1) == [("a0", RejectReason.MALFORMED)]  # never too_large
            assert f"Dropping too large outgoing PUBLISH for fedmq-coordinator-{job}" in (
                uncapped.log())
        finally:
            client.disconnect()
            client.loop_stop()
            coordinator.node.stop("test over")
            coordinator.join()
