"""Client sampling over a real Mosquitto: only the cohort named in each announcement trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import CoordinatorThread, TopicWatcher, agent_fleet

from coordinator import RoundConfig
from fedmq.broker import LocalBroker
from fedmq.tasks import get_task
from protocol import ClosedBy, Phase, decode_model, decode_update

pytestmark = pytest.mark.integration


def test_agents_not_in_the_cohort_do_not_train(broker: LocalBroker, tmp_path: Path) -> None:
    job = "sampled-run"
    watcher = TopicWatcher(broker.url, job)
    config = RoundConfig(job=job, task="digits", rounds=3, plan=get_task("digits").plan,
                         deadline_s=30.0, min_agents=5, sample_count=2, sample_seed=11)
    coord = CoordinatorThread(config, broker.url, tmp_path)
    with agent_fleet(broker.url, job, "digits", 5):
        coord.start().join()
    assert coord.node.rounds.phase is Phase.DONE

    announced = [decode_model(p) for p in watcher.on("/model")]
    cohorts = {m.round: set(m.cohort or ()) for m in announced if not m.done}
    assert sorted(cohorts) == [1, 2, 3]
    assert all(len(c) == 2 for c in cohorts.values())
    # every update on the broker came from an agent asked in that round, and every asked one sent
    senders: dict[int, set[str]] = {1: set(), 2: set(), 3: set()}
    for topic, payload, _ in watcher.messages:
        if "/update/" in topic:
            update = decode_update(payload)
            senders[update.round].add(update.agent)
    assert senders == cohorts
    assert [(m.accepted, m.closed_by, dict(m.rejected)) for m in coord.closed] == [
        (2, ClosedBy.QUORUM, {})
    ] * 3
    watcher.close()
