"""Compressed updates end to end over a real Mosquitto: top-k + int8 + zstd with error
feedback, a float16 downlink, and residuals persisted in each agent's state dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import CoordinatorThread, TopicWatcher

from coordinator import RoundConfig
from edge_agent.feedback import load_residual
from edge_agent.mqtt import run_fleet
from fedmq.broker import LocalBroker
from fedmq.launch import RESIDUAL_NAME, AgentSettings, Connection, build_agent
from fedmq.tasks import DataConfig, get_task
from protocol import ClosedBy, Phase, decode_model, decode_update
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

DIGITS = get_task("digits")
AGENTS = 5


def test_topk_int8_zstd_run_converges_on_a_fraction_of_the_raw_bytes(
    broker: LocalBroker, tmp_path: Path
) -> None:
    job, codec = "codecs-topk", "topk:0.1+int8+zstd"
    config = RoundConfig(
        job=job,
        task="digits",
        rounds=4,
        plan=DIGITS.plan,
        deadline_s=30.0,
        min_agents=AGENTS,
        codec=codec,
        downlink="fp16",
    )
    watcher = TopicWatcher(broker.url, job)
    coord = CoordinatorThread(config, broker.url, tmp_path / "run")
    state_dir = tmp_path / "agents"
    nodes = [
        build_agent(
            AgentSettings(job=job, task="digits", agent_id=f"agent-{i}", shard=i,
                          num_shards=AGENTS, data=DataConfig(), threads=1, state_dir=state_dir),
            Connection(BrokerURL.parse(broker.url)),
        )
        for i in range(AGENTS)
    ]
    threads = run_fleet(nodes)
    try:
        coord.start().join()
        for node in nodes:
            assert node.finished.wait(10)
    finally:
        for node in nodes:
            node.stop()
        for thread in threads:
            thread.join(10)
        watcher.close()

    assert coord.node.rounds.phase is Phase.DONE
    metrics = watcher.metrics()
    assert [m.round for m in metrics] == [1, 2, 3, 4]
    assert all(m.accepted == AGENTS and m.closed_by is ClosedBy.QUORUM for m in metrics)
    assert all(sum(m.rejected.values()) == 0 for m in metrics)
    assert metrics[-1].accuracy is not None and metrics[-1].accuracy >= 0.85
    for m in metrics:
        assert m.raw_bytes_up == AGENTS * 4 * 4810  # the MLP 64-64-10 has 4,810 weights
        assert m.bytes_up * 8 <= m.raw_bytes_up  # 10% of the values, a byte or two each

    updates = [decode_update(p) for p in watcher.on("/update/agent-0")]
    assert updates and all(u.codec == codec and len(u.tensors) == 1 for u in updates)
    assert all(set(u.tensors[0]) == {"zstd", "size"} for u in updates)
    final = decode_model(watcher.on("/model")[-1])
    assert final.done

    # Each agent kept what it did not send, for this run, in its own state dir.
    for i in range(AGENTS):
        residual = load_residual(state_dir / f"agent-{i}" / RESIDUAL_NAME)
        assert residual is not None and residual.scope == coord.node.rounds.run
        assert list(residual.tensors) == list(final.weights)
        assert any(abs(a).max() > 0 for a in residual.tensors.values())
