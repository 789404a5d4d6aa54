"""Faults over a real Mosquitto: agents killed mid-round and a straggler, a broker restarted
mid-round with updates in flight, a coordinator SIGKILLed and resumed, and an agent whose
connection is cut. Each run must account for every round once and, where the same updates
went in, end with the very model (bit for bit) of a run that saw no fault."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from harness import CoordinatorThread, TopicWatcher, agent_fleet, fedmq_process, wait_process
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import Action, RoundClosed, RoundConfig, UpdateAccepted, load_checkpoint
from fedmq.broker import LocalBroker
from fedmq.launch import CHECKPOINT_NAME
from fedmq.tasks import get_task
from protocol import ClosedBy, Phase, Weights, decode_presence
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

PLAN = get_task("digits").plan


def digits_config(job: str, **overrides: object) -> RoundConfig:
    settings: dict[str, object] = {"job": job, "task": "digits", "rounds": 3, "plan": PLAN,
                                   "deadline_s": 30.0}
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def same_bits(a: Weights, b: Weights) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[n], b[n]) for n in a)


def clean_run(url: str, job: str, agents: int, rounds: int, tmp_path: Path) -> Weights:
    """The model after ``rounds`` rounds with every agent in every round and no fault."""
    config = digits_config(job, rounds=rounds, min_agents=agents)
    coord = CoordinatorThread(config, url, tmp_path / job)
    with agent_fleet(url, job, "digits", agents):
        coord.start().join()
    assert [m.accepted for m in coord.closed] == [agents] * rounds
    return coord.node.rounds.weights


def agent_process(url: str, job: str, index: int, total: int, log: Path) -> subprocess.Popen[bytes]:
    return fedmq_process("agent", "--broker", url, "--job", job, "--task", "digits",
                         "--agent-id", f"agent-{index}", "--shard", f"{index}/{total}",
                         "--threads", "1", log=log)


def test_agents_killed_mid_round_close_it_at_the_deadline_and_a_straggler_is_stale(
    broker: LocalBroker, tmp_path: Path
) -> None:
    job = "killed-30pct"
    watcher = TopicWatcher(broker.url, job)
    # Ten agents: 0-5 in this process; 6, 7, 8 (30 %) are killed in round 2, and 9 is
    # frozen through round 2 so that its round-2 update arrives while round 3 is open.
    victims = [agent_process(broker.url, job, k, 10, tmp_path / f"agent-{k}.log")
               for k in (6, 7, 8)]
    straggler = agent_process(broker.url, job, 9, 10, tmp_path / "agent-9.log")
    frozen = [*victims, straggler]

    def faults(action: Action) -> None:  # on the coordinator's thread, in action order
        if isinstance(action, RoundClosed) and action.metrics.round == 1:
            for proc in frozen:  # round 2 is already announced to them; they cannot answer
                proc.send_signal(signal.SIGSTOP)
        elif isinstance(action, UpdateAccepted) and (action.round_no, action.accepted) == (2, 1):
            for proc in victims:
                proc.kill()  # SIGKILL mid-round: the broker publishes their last wills
                proc.wait(10)
        elif isinstance(action, RoundClosed) and action.metrics.round == 2:
            straggler.send_signal(signal.SIGCONT)

    config = digits_config(job, min_agents=10, min_replies=5, deadline_s=4.0)
    coord = CoordinatorThread(config, broker.url, tmp_path, on_action=faults)
    try:
        with agent_fleet(broker.url, job, "digits", 6, total=10):
            coord.start().join(timeout=120)
    finally:
        for proc in frozen:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(10)
    first, second, third = coord.closed
    assert (first.accepted, first.closed_by) == (10, ClosedBy.QUORUM)
    # Round 2 waited out its deadline for the four silent agents, then closed with six.
    assert (second.accepted, second.closed_by, second.rejected) == (6, ClosedBy.DEADLINE, {})
    assert second.duration_s >= 4.0
    # By round 3 the victims' wills had marked them offline; the straggler's round-2
    # update arrived during round 3: counted as stale, not folded in. Its round-3 one was.
    assert (third.accepted, third.closed_by, third.rejected) == (7, ClosedBy.QUORUM, {"stale": 1})
    assert coord.node.rounds.phase is Phase.DONE
    assert all(proc.returncode == -signal.SIGKILL for proc in victims)
    offline = {decode_presence(p).agent for t, p, _ in watcher.messages
               if "/agents/" in t and p and not decode_presence(p).online}
    assert {"agent-6", "agent-7", "agent-8"} <= offline
    watcher.close()


def test_broker_restart_mid_round_with_updates_in_flight_loses_and_doubles_nothing(
    broker: LocalBroker, own_broker: LocalBroker, tmp_path: Path
) -> None:
    want = clean_run(broker.url, "restart-clean", 4, 4, tmp_path)
    job = "restart-mid-round"
    restarted = threading.Event()

    def restart(action: Action) -> None:
        # Round 2 has one update in; three are being trained or are on their way.
        if isinstance(action, UpdateAccepted) and (action.round_no, action.accepted) == (2, 1):
            own_broker.restart()  # no persistence: retained messages and sessions are gone
            restarted.set()

    # An agent whose "online" presence has not reached the coordinator again when the next
    # round opens is not asked, and that round would close at the others' quorum, which is
    # right but not the clean run; a quorum of all four makes every round wait for them.
    config = digits_config(job, rounds=4, min_agents=4, quorum=4)
    coord = CoordinatorThread(config, own_broker.url, tmp_path / job, on_action=restart)
    with agent_fleet(own_broker.url, job, "digits", 4):
        coord.start().join(timeout=120)
    assert restarted.is_set()
    rounds = coord.node.rounds
    assert rounds.phase is Phase.DONE
    # Every round aggregated once, none skipped, each agent counted once per round: a
    # second copy of an update (paho's retransmission, or the agent re-sending when the
    # coordinator re-announced the round after reconnecting) is rejected as a duplicate,
    # or as stale once its round has closed ...
    history = [(m.round, m.accepted) for m in rounds.history]
    assert history == [(r, 4) for r in range(1, 5)], rounds.history
    assert set(rounds.rejected_total) <= {"duplicate", "stale"}
    # ... so the model is exactly the one of the run without the restart.
    assert same_bits(rounds.weights, want)


def test_coordinator_sigkill_mid_run_and_resume_ends_with_the_uninterrupted_model(
    broker: LocalBroker, tmp_path: Path
) -> None:
    want = clean_run(broker.url, "kill-clean", 4, 5, tmp_path)
    job = "kill-resume"
    run_dir = tmp_path / "run"
    watcher = TopicWatcher(broker.url, job)
    args = ["coordinator", "--broker", broker.url, "--job", job, "--task", "digits",
            "--rounds", "5", "--min-agents", "4", "--deadline", "30", "--run-dir", str(run_dir)]
    with agent_fleet(broker.url, job, "digits", 4):
        first = fedmq_process(*args, log=tmp_path / "first.log")
        watcher.wait_for(lambda: any(m.round == 2 for m in watcher.metrics()))
        first.kill()  # SIGKILL while round 3 is under way
        first.wait(10)
        killed_after = max(m.round for m in watcher.metrics())
        second = fedmq_process(*args, "--resume", log=tmp_path / "second.log")
        assert wait_process(second, timeout=120) == 0, (tmp_path / "second.log").read_text()
    assert first.returncode == -signal.SIGKILL and killed_after < 5
    final = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert [(m.round, m.accepted) for m in final.history] == [(r, 4) for r in range(1, 6)]
    assert len({m.run for m in final.history}) == 1
    assert same_bits(final.weights, want)
    watcher.close()


def kick(url: str, client_id: str) -> None:
    """Cut a client's connection as a network fault would: the broker drops it when another
    connection takes over its client id (its last will is published)."""
    broker = BrokerURL.parse(url)
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                           protocol=mqtt.MQTTv5)
    connected = threading.Event()
    intruder.on_connect = lambda *_: connected.set()
    intruder.connect(broker.host, broker.port)
    intruder.loop_start()
    try:
        assert connected.wait(10), "the intruder was not let in"
    finally:
        intruder.disconnect()
        intruder.loop_stop()


def test_an_agent_whose_connection_is_cut_picks_up_the_current_round_after_reconnecting(
    broker: LocalBroker, tmp_path: Path
) -> None:
    job = "reconnecting-agent"
    watcher = TopicWatcher(broker.url, job)

    def cut(action: Action) -> None:
        # Round 2 is announced right after this returns: agent-2 is off the broker then
        # and can only get the round from the retained model once it is back.
        if isinstance(action, RoundClosed) and action.metrics.round == 1:
            kick(broker.url, f"fedmq-{job}-agent-2")

    config = digits_config(job, min_agents=3, quorum=3, min_replies=3)
    coord = CoordinatorThread(config, broker.url, tmp_path, on_action=cut)
    with agent_fleet(broker.url, job, "digits", 3) as agents:
        coord.start().join(timeout=120)
        assert agents[2].rounds_trained == 3
    assert [(m.accepted, m.closed_by) for m in coord.closed] == [(3, ClosedBy.QUORUM)] * 3
    presences = [decode_presence(p).online for p in watcher.on("/agents/agent-2") if p]
    # online, offline (its will, at the cut), online again after paho's reconnect
    assert presences[:3] == [True, False, True]
    watcher.close()
