"""MQTT sessions: 3.1.1 clients, and a broker restarted in the middle of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import CoordinatorThread, TopicWatcher, agent_fleet, watching_logs

from coordinator import RoundConfig
from fedmq.broker import LocalBroker
from fedmq.tasks import get_task
from protocol import ClosedBy, Phase, decode_presence

pytestmark = pytest.mark.integration

PLAN = get_task("digits").plan


def test_a_run_over_mqtt_3_1_1_completes(broker: LocalBroker, tmp_path: Path) -> None:
    job = "mqtt311"
    config = RoundConfig(job=job, task="digits", rounds=2, plan=PLAN, min_agents=3)
    coord = CoordinatorThread(config, broker.url, tmp_path, mqtt5=False)
    with agent_fleet(broker.url, job, "digits", 3, mqtt5=False):
        coord.start().join()
    assert coord.node.rounds.phase is Phase.DONE
    assert [(m.accepted, m.closed_by) for m in coord.closed] == [(3, ClosedBy.QUORUM)] * 2


def test_run_survives_a_broker_restart_between_rounds(own_broker: LocalBroker,
                                                      tmp_path: Path) -> None:
    job = "broker-restart"
    config = RoundConfig(job=job, task="digits", rounds=4, plan=PLAN, min_agents=3,
                         deadline_s=20.0)
    coord = CoordinatorThread(config, own_broker.url, tmp_path)
    with agent_fleet(own_broker.url, job, "digits", 3):
        coord.start()
        coord.wait_rounds(1)
        # Without persistence the broker forgets every retained message and session.
        own_broker.restart()
        watcher = TopicWatcher(own_broker.url, job)
        coord.join(timeout=90)
    rounds = coord.node.rounds
    assert rounds.phase is Phase.DONE
    assert [m.round for m in rounds.history] == [1, 2, 3, 4]
    # No round was aggregated twice or skipped, and every agent took part in each.
    assert all(m.accepted == 3 for m in rounds.history)
    # Agents re-announced themselves after reconnecting.
    online = {decode_presence(p).agent for t, p, _ in watcher.messages if "/agents/" in t}
    assert online == {"agent-0", "agent-1", "agent-2"}
    watcher.close()


def test_an_agent_whose_session_another_client_takes_over_says_so(broker: LocalBroker) -> None:
    """Two processes with one agent id share a client id: the broker keeps disconnecting one
    for the other, which used to happen without a word in either log."""
    job = "takeover"
    watcher = TopicWatcher(broker.url, job)
    with watching_logs() as logs, agent_fleet(broker.url, job, "linreg", 1,
                                              exit_when_done=False):
        watcher.wait_for(lambda: bool(watcher.on("/agents/agent-0")))
        with agent_fleet(broker.url, job, "linreg", 1, exit_when_done=False):
            line = logs.wait_for("taken over")
    watcher.close()
    assert "agent-0" in line and f"fedmq-{job}-agent-0" in line
    assert "running twice" in line  # the hint
