"""Client sampling over a real Mosquitto: only the cohort each announcement names, or its hash
admits, trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import CoordinatorThread, TopicWatcher, agent_fleet

from coordinator import RoundConfig
from fedmq import launch
from fedmq.broker import LocalBroker
from fedmq.tasks import get_task
from protocol import ClosedBy, Phase, decode_model, decode_update
from protocol.cohort_hash import CohortHash, asks, below_for, in_cohort

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


def test_a_hashed_cohort_trains_exactly_the_agents_that_pass_its_hash(
    broker: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The announcement names nobody: each agent checks the hash of (job, run, round, itself).
    job = "hashed-run"
    agents = [f"agent-{k}" for k in range(6)]
    rule = CohortHash(below_for(0.5))
    # a fixed run whose three rounds each ask some of the six, not all (seeds fixed)
    run = next(r for r in (f"run{k:03d}" for k in range(1000))
               if all(0 < sum(in_cohort(rule, job, r, n, a) for a in agents) < len(agents)
                      for n in (1, 2, 3)))
    monkeypatch.setattr(launch, "new_run_id", lambda: run)
    watcher = TopicWatcher(broker.url, job)
    config = RoundConfig(job=job, task="digits", rounds=3, plan=get_task("digits").plan,
                         deadline_s=30.0, min_agents=6, sample_fraction=0.5, cohort_by="hash")
    coord = CoordinatorThread(config, broker.url, tmp_path)
    with agent_fleet(broker.url, job, "digits", 6):
        coord.start().join()
    assert coord.node.rounds.phase is Phase.DONE

    announced = [decode_model(p) for p in watcher.on("/model")]
    rounds = {m.round: m for m in announced if not m.done}
    assert sorted(rounds) == [1, 2, 3]
    assert all(m.run == run and m.cohort is None and m.cohort_hash == rule
               for m in rounds.values())
    passing = {r: {a for a in agents if asks(m, a)} for r, m in rounds.items()}
    senders: dict[int, set[str]] = {1: set(), 2: set(), 3: set()}
    for topic, payload, _ in watcher.messages:
        if "/update/" in topic:
            update = decode_update(payload)
            senders[update.round].add(update.agent)
    assert senders == passing
    assert [m.accepted for m in coord.closed] == [len(passing[r]) for r in (1, 2, 3)]
    assert all(m.closed_by is ClosedBy.QUORUM and not m.rejected for m in coord.closed)
    watcher.close()
