"""Models and updates larger than the broker's payload cap travel in chunks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from harness import CoordinatorThread, TopicWatcher, agent_fleet

from coordinator import RoundConfig
from edge_agent.torch_trainer import TorchTrainer, initial_weights
from fedmq.broker import LocalBroker
from fedmq.tasks import DataConfig, Task, agent_data, get_task
from fedmq.tasks.mnist import find_mnist_dir
from protocol import ClosedBy, Phase, Weights, decode_model
from protocol.chunks import Reassembler
from tests.needs import unavailable

pytestmark = pytest.mark.integration

CAP = 128 * 1024
#: MQTT fixed header, topic and properties on top of a payload of at most CAP bytes
HEADROOM = 256


def in_process_fedavg(task: Task, data: DataConfig, shards: range, of: int,
                      rounds: int) -> Weights:
    trainers = [TorchTrainer(task.model, task.kind, *agent_data(task, data, k, of), k)
                for k in shards]
    weights = initial_weights(task.model, 0)
    for r in range(1, rounds + 1):
        results = [t.train(weights, task.plan, r) for t in trainers]
        samples = [res.samples for res in results]
        weights = {
            name: np.average([res.weights[name] for res in results], axis=0, weights=samples)
            .astype(np.float32)
            for name in weights
        }
    return weights


@pytest.fixture
def capped_broker() -> Iterator[LocalBroker]:
    """A broker that drops any client sending a packet above 128 KiB (+ MQTT headers)."""
    with LocalBroker(extra_config=f"max_packet_size {CAP + HEADROOM}\n") as broker:
        yield broker


def test_cnn_trains_through_a_128k_payload_cap(capped_broker: LocalBroker,
                                               tmp_path: Path) -> None:
    try:
        data = DataConfig(data_dir=find_mnist_dir(None))
    except FileNotFoundError as exc:
        unavailable(f"MNIST not available: {exc}")
    job, cnn = "chunked-cnn", get_task("mnist-cnn")
    watcher = TopicWatcher(capped_broker.url, job)
    config = RoundConfig(job=job, task="mnist-cnn", rounds=2, plan=cnn.plan, min_agents=3,
                         deadline_s=120.0, max_payload=CAP)
    coord = CoordinatorThread(config, capped_broker.url, tmp_path, data=data)
    with agent_fleet(capped_broker.url, job, "mnist-cnn", 3, total=20, data=data):
        coord.start().join(timeout=300)
    rounds = coord.node.rounds
    assert rounds.phase is Phase.DONE
    assert [(m.accepted, m.closed_by) for m in rounds.history] == [(3, ClosedBy.QUORUM)] * 2
    # 1.66 M float32 parameters: each update is ~6.6 MB, so dozens of chunks per agent.
    assert all(m.bytes_up > 3 * 6_000_000 for m in rounds.history)
    assert all((m.accuracy or 0.0) > 0.2 for m in rounds.history)  # chance is 0.1
    # Chunking is transparent: the result equals FedAvg computed in one process.
    expected = in_process_fedavg(cnn, data, shards=range(3), of=20, rounds=2)
    worst = max(float(np.abs(rounds.weights[n] - expected[n]).max()) for n in expected)
    assert worst <= 1e-5
    # Nothing larger than the cap crossed the broker, and the retained chunks
    # reassemble into the final model a late agent would get.
    assert max(len(p) for _, p, _ in watcher.messages) <= CAP
    chunks = Reassembler(10**9, 60.0, 10**9)
    finals = [out for t, p, retained in watcher.messages
              if "/model/chunk/" in t and (out := chunks.add("model", p, 0.0)) is not None]
    final = decode_model(finals[-1])
    assert final.done and final.round == 2
    for name, w in rounds.weights.items():
        np.testing.assert_array_equal(final.weights[name], w)
    watcher.close()
