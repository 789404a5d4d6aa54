"""End to end over a real Mosquitto: full runs, dead and late agents, garbage, crash and resume."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from harness import (
    CoordinatorThread,
    TopicWatcher,
    agent_fleet,
    fedmq_process,
    wait_process,
)
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import Action, RoundClosed, RoundConfig
from edge_agent.torch_trainer import TorchTrainer, initial_weights
from fedmq.broker import LocalBroker
from fedmq.tasks import DataConfig, agent_data, get_task
from protocol import (
    ClosedBy,
    Phase,
    Presence,
    Topics,
    Update,
    decode_model,
    decode_presence,
    decode_status,
    encode_delta,
    encode_presence,
    encode_update,
)
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

DIGITS = get_task("digits")


def digits_config(job: str, **overrides: object) -> RoundConfig:
    settings: dict[str, object] = {"job": job, "task": "digits", "rounds": 3,
                                   "plan": DIGITS.plan, "deadline_s": 30.0}
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def publish_raw(url: str, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish one message as an outsider would, and wait until the broker has it."""
    broker = BrokerURL.parse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_full_run_reaches_accuracy_and_topics_follow_protocol(broker: LocalBroker,
                                                              tmp_path: Path) -> None:
    job = "full-run"
    watcher = TopicWatcher(broker.url, job)
    coord = CoordinatorThread(digits_config(job, rounds=4, min_agents=5), broker.url, tmp_path)
    with agent_fleet(broker.url, job, "digits", 5) as agents:
        coord.start().join()
        for node in agents:
            node.finished.wait(10)
    rounds = coord.node.rounds
    assert rounds.phase is Phase.DONE
    metrics = watcher.metrics()
    assert [m.round for m in metrics] == [1, 2, 3, 4]
    assert all(m.accepted == 5 and m.closed_by is ClosedBy.QUORUM for m in metrics)
    assert metrics[-1].accuracy is not None and metrics[-1].accuracy >= 0.85
    assert all(m.bytes_up > 0 and m.bytes_down > 0 for m in metrics)
    # The retained model is the final one, marked done, equal to the coordinator's weights.
    final = decode_model(watcher.on("/model")[-1])
    assert final.done and final.round == 4
    for name, w in rounds.weights.items():
        np.testing.assert_array_equal(final.weights[name], w)
    statuses = [decode_status(p) for p in watcher.on("/status")]
    assert statuses[-1].phase is Phase.DONE and statuses[-1].round == 4
    assert max(s.accepted for s in statuses) == 5
    presences = [decode_presence(p) for t, p, _ in watcher.messages if "/agents/" in t]
    assert {p.agent for p in presences if p.online} == {f"agent-{i}" for i in range(5)}
    assert all(p.samples and p.trainer == "torch" for p in presences if p.online)
    assert (tmp_path / "checkpoint.msgpack").exists()
    watcher.close()


def test_killed_agent_makes_the_round_close_at_its_deadline(broker: LocalBroker,
                                                            tmp_path: Path) -> None:
    job = "killed-agent"
    watcher = TopicWatcher(broker.url, job)
    victim = fedmq_process(
        "agent", "--broker", broker.url, "--job", job, "--task", "digits",
        "--agent-id", "agent-3", "--shard", "3/4", "--threads", "1",
        log=tmp_path / "victim.log",
    )

    def kill_after_round_one(action: Action) -> None:
        # Runs on the coordinator's thread before round 2 is announced.
        if isinstance(action, RoundClosed) and action.metrics.round == 1:
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)

    config = digits_config(job, quorum=4, min_replies=2, min_agents=4, deadline_s=2.0)
    coord = CoordinatorThread(config, broker.url, tmp_path, on_action=kill_after_round_one)
    with agent_fleet(broker.url, job, "digits", 3, total=4):
        coord.start().join()
    assert victim.returncode == -signal.SIGKILL
    first, *rest = coord.closed
    assert (first.accepted, first.closed_by) == (4, ClosedBy.QUORUM)
    # Round 2 was announced while agent-3 still counted as online: it waits out the deadline.
    # By round 3 its last will has marked it offline, so the round closes once the three
    # live agents have answered (min_replies is met) instead of waiting for the dead.
    assert [(m.accepted, m.closed_by) for m in rest] == [
        (3, ClosedBy.DEADLINE),
        (3, ClosedBy.ALL_REPLIED),
    ]
    assert rest[0].duration_s >= 2.0
    assert coord.node.rounds.phase is Phase.DONE
    # The broker published the victim's last will: offline, retained.
    watcher.wait_for(lambda: any(
        not decode_presence(p).online for p in watcher.on("/agents/agent-3")))
    watcher.close()


def test_late_agent_gets_the_current_round_from_the_retained_model(broker: LocalBroker,
                                                                   tmp_path: Path) -> None:
    job = "late-agent"
    watcher = TopicWatcher(broker.url, job)
    config = digits_config(job, rounds=1, quorum=3, min_replies=3, min_agents=2)
    coord = CoordinatorThread(config, broker.url, tmp_path)
    with agent_fleet(broker.url, job, "digits", 2, total=3):
        coord.start()
        # Round 1 waits for a third reply after the two early agents have answered.
        watcher.wait_for(lambda: any(decode_status(p).accepted == 2
                                     for p in watcher.on("/status")))
        with agent_fleet(broker.url, job, "digits", 1, first=2, total=3) as (late,):
            coord.join()
            assert late.rounds_trained == 1
    (metrics,) = coord.closed
    assert (metrics.accepted, metrics.closed_by) == (3, ClosedBy.QUORUM)
    watcher.close()


def test_garbage_and_poisoned_updates_are_rejected_and_the_run_finishes(
    broker: LocalBroker, tmp_path: Path
) -> None:
    job = "garbage"
    topics = Topics(job)
    watcher = TopicWatcher(broker.url, job)
    # "mallory" announces presence like any agent, so each round expects it too.
    mallory = Presence(agent="mallory", online=True, samples=10, trainer="none")
    publish_raw(broker.url, topics.presence("mallory"), encode_presence(mallory), retain=True)
    config = digits_config(job, rounds=2, quorum=3, min_agents=3, min_replies=2, deadline_s=3.0)
    coord = CoordinatorThread(config, broker.url, tmp_path)
    with agent_fleet(broker.url, job, "digits", 2, total=3):
        coord.start()
        watcher.wait_for(lambda: any(decode_status(p).accepted == 2
                                     for p in watcher.on("/status")))
        model = decode_model(watcher.on("/model")[-1])
        publish_raw(broker.url, topics.update("mallory"), b"\x93not msgpack at all")
        poisoned = {n: np.full(w.shape, np.nan, np.float32) for n, w in model.weights.items()}
        zeros = {n: np.zeros(w.shape, np.float32) for n, w in model.weights.items()}
        for delta in (poisoned, zeros):
            update = Update(job=job, agent="mallory", round=1, model_id=model.model_id,
                            samples=10, codec="none", tensors=tuple(encode_delta(delta, "none")))
            publish_raw(broker.url, topics.update("mallory"), encode_update(update))
        coord.join()
        publish_raw(broker.url, topics.presence("mallory"), b"", retain=True)
    first, second = coord.closed
    assert first.rejected == {"malformed": 1, "non_finite": 1}
    assert (first.accepted, first.closed_by) == (3, ClosedBy.QUORUM)
    assert (second.accepted, second.closed_by) == (2, ClosedBy.DEADLINE)
    assert coord.node.rounds.rejected_total == {"malformed": 1, "non_finite": 1}
    assert coord.node.rounds.phase is Phase.DONE
    watcher.close()


def test_killed_coordinator_resumes_from_its_checkpoint(broker: LocalBroker,
                                                        tmp_path: Path) -> None:
    job = "resume"
    watcher = TopicWatcher(broker.url, job)
    # A ghost agent that is "online" but never answers makes every round close at its
    # 1.5 s deadline, which leaves time to kill the coordinator in the middle of a round.
    ghost = Presence(agent="ghost", online=True, samples=1, trainer="none")
    publish_raw(broker.url, Topics(job).presence("ghost"), encode_presence(ghost), retain=True)
    args = ["coordinator", "--broker", broker.url, "--job", job, "--task", "digits",
            "--rounds", "5", "--min-replies", "3", "--min-agents", "4",
            "--deadline", "1.5", "--run-dir", str(tmp_path / "run")]
    with agent_fleet(broker.url, job, "digits", 3):
        first = fedmq_process(*args, log=tmp_path / "first.log")
        watcher.wait_for(lambda: any(m.round == 2 for m in watcher.metrics()))
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        run_id = watcher.metrics()[0].run
        second = fedmq_process(*args, "--resume", log=tmp_path / "second.log")
        assert wait_process(second) == 0, (tmp_path / "second.log").read_text()
    publish_raw(broker.url, Topics(job).presence("ghost"), b"", retain=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["phase"] == "done" and summary["rounds_completed"] == 5
    closed = {(m.run, m.round): m for m in watcher.metrics()}
    assert set(closed) == {(run_id, r) for r in range(1, 6)}
    assert all(m.accepted == 3 for m in closed.values())
    assert "resuming run " + run_id in (tmp_path / "second.log").read_text()
    watcher.close()


def test_three_rounds_over_mqtt_equal_in_process_fedavg(broker: LocalBroker,
                                                        tmp_path: Path) -> None:
    job = "exact"
    n_agents, rounds = 5, 3
    config = digits_config(job, rounds=rounds, min_agents=n_agents)
    coord = CoordinatorThread(config, broker.url, tmp_path)
    with agent_fleet(broker.url, job, "digits", n_agents):
        coord.start().join()
    over_mqtt = coord.node.rounds.weights

    data = DataConfig()
    trainers = [
        TorchTrainer(DIGITS.model, DIGITS.kind, *agent_data(DIGITS, data, k, n_agents), k)
        for k in range(n_agents)
    ]
    global_w = initial_weights(DIGITS.model, 0)
    for r in range(1, rounds + 1):
        results = [t.train(global_w, DIGITS.plan, r) for t in trainers]
        samples = [res.samples for res in results]
        global_w = {
            name: np.average([res.weights[name] for res in results], axis=0, weights=samples)
            .astype(np.float32)
            for name in global_w
        }
    worst = max(float(np.abs(over_mqtt[n] - global_w[n]).max()) for n in global_w)
    assert worst <= 1e-5
