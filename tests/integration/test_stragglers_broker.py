"""Straggler-aware synchronous rounds over a real Mosquitto: over-selection asks more agents
than the quorum, rounds close at quorum, and the slow agent's late work is carried into the
next round (--carry-late) instead of being thrown away."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import CoordinatorThread, TopicWatcher, agent_fleet

from coordinator import RoundConfig
from fedmq.broker import LocalBroker
from fedmq.tasks import get_task
from protocol import Phase, decode_model

pytestmark = pytest.mark.integration

#: three agents of class 1 and one slower (an artificial delay, the experiment)
DELAYS_S = (0.3, 0.3, 0.3, 0.6)


def test_late_work_is_carried_into_the_next_round(broker: LocalBroker, tmp_path: Path) -> None:
    job = "carry-late"
    watcher = TopicWatcher(broker.url, job)
    config = RoundConfig(job=job, task="digits", rounds=6, plan=get_task("digits").plan,
                         deadline_s=30.0, min_agents=4, quorum=3, over_select=1.34,
                         carry_late=5)
    coord = CoordinatorThread(config, broker.url, tmp_path)
    with agent_fleet(broker.url, job, "digits", 4, train_delays_s=DELAYS_S):
        coord.start().join()
    watcher.close()
    assert coord.node.rounds.phase is Phase.DONE
    assert [m.closed_by.value for m in coord.closed] == ["quorum"] * 6
    assert all(m.accepted == 3 for m in coord.closed)  # fresh work only closes a round
    versions = [m for m in (decode_model(p) for p in watcher.on("/model")) if not m.done]
    assert versions and all(m.cohort is not None and len(m.cohort) == 4 for m in versions)
    carried = sum(n for m in coord.closed for tau, n in (m.staleness or {}).items() if tau != "0")
    # (one carried while the last round is evaluated joins no round)
    assert 1 <= carried <= coord.node.rounds.carried_total
    # at most the last round's late update finds no round left to join
    assert coord.node.rounds.rejected_total.get("stale", 0) <= 1
