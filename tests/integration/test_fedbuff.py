"""FedBuff over a real Mosquitto: a buffered asynchronous run completes with uneven agents."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import CoordinatorThread, TopicWatcher, agent_fleet

from coordinator import RoundConfig
from coordinator.staleness import BufferConfig
from fedmq.broker import LocalBroker
from fedmq.tasks import get_task
from protocol import Phase, decode_model, decode_update

pytestmark = pytest.mark.integration

#: two fast agents, one 3x and one 10x slower (an artificial delay, the experiment)
DELAYS_S = (0.0, 0.0, 0.2, 1.0)


def test_a_fedbuff_run_completes_with_uneven_agents(broker: LocalBroker, tmp_path: Path) -> None:
    job = "fedbuff-run"
    watcher = TopicWatcher(broker.url, job)
    config = RoundConfig(job=job, task="digits", rounds=4, plan=get_task("digits").plan,
                         deadline_s=30.0, min_agents=4)
    buffer = BufferConfig(k=2, max_staleness=3, concurrency=3)
    coord = CoordinatorThread(config, broker.url, tmp_path, buffer=buffer)
    with agent_fleet(broker.url, job, "digits", 4, train_delays_s=DELAYS_S):
        coord.start().join()
    assert coord.node.rounds.phase is Phase.DONE
    assert [m.round for m in coord.closed] == [1, 2, 3, 4]
    assert all(m.accepted == buffer.k and m.accuracy is not None for m in coord.closed)

    announced = [decode_model(p) for p in watcher.on("/model")]
    versions = [m for m in announced if not m.done]
    assert {m.round for m in versions} == {1, 2, 3, 4}
    assert all(m.max_staleness == 3 and m.cohort is not None for m in versions)
    named: dict[int, set[str]] = {}
    for m in versions:
        named.setdefault(m.round, set()).update(m.cohort or ())
    # Every update on the broker is based on a version that named its sender.
    updates = [decode_update(p) for t, p, _ in watcher.messages if "/update/" in t]
    assert updates and all(u.agent in named[u.round] for u in updates)
    watcher.close()
