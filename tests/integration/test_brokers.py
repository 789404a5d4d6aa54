"""The broker matrix: what a user does, on Mosquitto, NATS and RabbitMQ alike.

Each test takes ``any_broker`` and so runs once per broker (docs/BROKERS.md): NATS
and RabbitMQ speak MQTT 3.1.1 only, so fedmq falls back to it; RabbitMQ replays no
retained message to a wildcard subscription, so nothing fedmq needs may depend on
that. With the parametrised tests in test_training.py (last will, kill and
``--resume``) and test_monitor.py (the monitor) this is the subset of
docs/BROKERS.md's "Tested here".
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness import (
    CoordinatorThread,
    TopicWatcher,
    agent_fleet,
    fedmq_process,
    session_present,
    wait_process,
)

from coordinator import RoundConfig
from fedmq.tasks import get_task
from fedmq_tools.brokers import PrivateBroker, RabbitBroker
from protocol import ClosedBy, Phase, decode_presence, decode_status

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

DIGITS = get_task("digits")


def digits(job: str, **overrides: object) -> RoundConfig:
    settings: dict[str, object] = {"job": job, "task": "digits", "rounds": 2,
                                   "plan": DIGITS.plan, "deadline_s": 30.0, "min_agents": 3}
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def online(watcher: TopicWatcher) -> set[str]:
    return {decode_presence(p).agent for t, p, _ in watcher.messages
            if "/agents/" in t and p and decode_presence(p).online}


def test_agents_that_were_there_first_answer_the_coordinators_roll_call(
    any_broker: PrivateBroker, tmp_path: Path
) -> None:
    job = "roll-call"
    watcher = TopicWatcher(any_broker.url, job)
    with agent_fleet(any_broker.url, job, "digits", 3):
        watcher.wait_for(lambda: len(online(watcher)) == 3)  # online before any coordinator
        coord = CoordinatorThread(digits(job), any_broker.url, tmp_path)
        coord.start().join()
    assert coord.node.rounds.phase is Phase.DONE
    assert [(m.accepted, m.closed_by) for m in coord.closed] == [(3, ClosedBy.QUORUM)] * 2
    # MQTT 5 where the broker speaks it, 3.1.1 where it does not: found out, not configured
    assert coord.node.link.mqtt5 is (type(any_broker).__name__ == "LocalBroker")
    # the run ended: the broker keeps no session (nor messages) for the coordinator
    assert not session_present(any_broker.url, f"fedmq-coordinator-{job}")
    if isinstance(any_broker, RabbitBroker):
        assert job not in any_broker.ctl("list_queues", "name")
    watcher.close()


def test_a_late_agent_gets_the_chunked_model_from_exact_subscriptions(
    any_broker: PrivateBroker, tmp_path: Path
) -> None:
    job = "late-chunked"
    watcher = TopicWatcher(any_broker.url, job)
    # digits' model is 19 kB: at a 4 kB cap it travels as 5 chunk frames, retained
    config = digits(job, rounds=1, min_agents=2, quorum=3, min_replies=3, max_payload=4096)
    coord = CoordinatorThread(config, any_broker.url, tmp_path)
    with agent_fleet(any_broker.url, job, "digits", 2, total=3):
        coord.start()
        watcher.wait_for(lambda: any(decode_status(p).accepted == 2
                                     for p in watcher.on("/status")))
        with agent_fleet(any_broker.url, job, "digits", 1, first=2, total=3) as (late,):
            coord.join()
            assert late.rounds_trained == 1
    (metrics,) = coord.closed
    assert (metrics.accepted, metrics.closed_by) == (3, ClosedBy.QUORUM)
    assert max(len(p) for t, p, _ in watcher.messages if "/model" in t) <= 4096
    watcher.close()


def test_a_stopped_coordinator_leaves_the_agents_waiting_and_resume_finishes(
    any_broker: PrivateBroker, tmp_path: Path
) -> None:
    job = "stop-resume"
    run_dir = tmp_path / "run"
    watcher = TopicWatcher(any_broker.url, job)
    args = ["coordinator", "--broker", any_broker.url, "--job", job, "--task", "digits",
            "--rounds", "4", "--min-agents", "3", "--deadline", "30", "--run-dir", str(run_dir)]
    with agent_fleet(any_broker.url, job, "digits", 3) as agents:
        first = fedmq_process(*args, log=tmp_path / "first.log")
        watcher.wait_for(lambda: any(m.round == 1 for m in watcher.metrics()))
        first.send_signal(signal.SIGTERM)  # what Ctrl-C and systemd's stop do
        assert wait_process(first) == 0, (tmp_path / "first.log").read_text()
        said = (tmp_path / "first.log").read_text()
        assert "stopped (SIGTERM)" in said and "--resume" in said
        # no final model went out: no agent was told the run is over
        assert not any(a.finished.is_set() for a in agents)
        assert session_present(any_broker.url, f"fedmq-coordinator-{job}")  # kept for resume
        second = fedmq_process(*args, "--resume", log=tmp_path / "second.log")
        assert wait_process(second, timeout=120) == 0, (tmp_path / "second.log").read_text()
        for agent in agents:
            assert agent.finished.wait(30)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["phase"] == "done" and summary["rounds_completed"] == 4
    rounds = sorted({(m.run, m.round) for m in watcher.metrics()})
    assert [r for _, r in rounds] == [1, 2, 3, 4] and len({run for run, _ in rounds}) == 1
    assert "stopped" in {decode_status(p).phase.value for p in watcher.on("/status")}
    watcher.close()


def test_the_demo_runs_against_the_broker(any_broker: PrivateBroker, tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "fedmq", "demo", "--broker", any_broker.url, "--agents", "3",
         "--rounds", "2", "--job", "demo-matrix", "--summary", str(summary_file)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(summary_file.read_text())
    assert (summary["phase"], summary["rounds_completed"]) == ("done", 2)
    assert summary["updates_accepted"] == 6 and summary["updates_rejected"] == 0
