"""Personal layers over a real Mosquitto: they never travel, and each device keeps its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from harness import TIMEOUT_S, CoordinatorThread, TopicWatcher

from coordinator import RoundConfig
from edge_agent.device_model import load_device_model
from edge_agent.mqtt import run_fleet
from edge_agent.personal import with_local_layers
from edge_agent.state import DEVICE_MODEL_NAME
from edge_agent.torch_trainer import initial_weights
from fedmq.broker import LocalBroker
from fedmq.launch import AgentSettings, Connection, build_agent
from fedmq.tasks import DataConfig, agent_data, get_task
from protocol import decode_model, decode_model_delta, decode_update
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

BLOBS = get_task("mlp")  # MLP 10-100-10: "0.*" the hidden layer, "2.*" the head
HEAD = ("2.weight", "2.bias")
SHARED = ["0.weight", "0.bias"]
AGENTS = 3
ROUNDS = 3


def test_personal_layers_never_appear_on_the_wire(broker: LocalBroker, tmp_path: Path) -> None:
    job = "personal-wire"
    plan = with_local_layers(BLOBS.plan, HEAD)
    config = RoundConfig(job=job, task="mlp", rounds=ROUNDS, plan=plan, deadline_s=30.0,
                         min_agents=AGENTS)
    watcher = TopicWatcher(broker.url, job)
    state = tmp_path / "state"
    nodes = [
        build_agent(
            AgentSettings(job=job, task="mlp", agent_id=f"agent-{i}", shard=i, num_shards=AGENTS,
                          partition="shards", threads=1, state_dir=state,
                          finetune_epochs=2 if i == 0 else 0),
            Connection(BrokerURL.parse(broker.url)),
        )
        for i in range(AGENTS)
    ]
    coord = CoordinatorThread(config, broker.url, tmp_path / "run")
    threads = run_fleet(nodes)
    try:
        coord.start().join()
        assert all(node.finished.wait(TIMEOUT_S) for node in nodes)
    finally:
        for node in nodes:
            node.stop()
        for thread in threads:
            thread.join(10)
        watcher.close()

    with watcher.cond:
        messages = list(watcher.messages)
    models = [decode_model(p) for t, p, _ in messages if t.endswith("/model")]
    updates = [p for t, p, _ in messages if "/update/" in t]
    assert len(models) >= ROUNDS + 1 and models[-1].done
    for model in models:
        assert list(model.weights) == SHARED
    assert len(updates) == AGENTS * ROUNDS
    for payload in updates:
        assert [t["name"] for t in decode_update(payload).tensors] == SHARED
        assert all(name.encode() not in payload for name in HEAD)
    for topic, payload, _ in messages:  # nothing else carries a personal tensor either
        if topic.endswith("/delta"):  # its header, like the model's, names them in the plan
            assert decode_model_delta(payload).tensors == ()  # whole models: notices only
        elif "/model" not in topic:
            assert b"2.weight" not in payload

    # No server-side test of a personalised model; agents' own training metrics stand in.
    metrics = watcher.metrics()
    assert [m.round for m in metrics] == [1, 2, 3]
    assert all(m.accuracy is None and m.train_accuracy is not None for m in metrics)

    final = models[-1].weights
    init = initial_weights(BLOBS.model, seed=0)
    heads = []
    for i, node in enumerate(nodes):
        saved = load_device_model(state / f"agent-{i}" / DEVICE_MODEL_NAME)
        assert saved is not None and list(saved) == [*SHARED, *HEAD]
        assert not np.array_equal(saved["2.weight"], init["2.weight"])  # trained on-device
        heads.append(saved["2.weight"])
        tuned = not np.array_equal(saved["0.weight"], final["0.weight"])
        assert tuned == (i == 0)  # only agent-0 fine-tunes the final global model
        x, y = agent_data(BLOBS, DataConfig(), i, AGENTS, "shards")
        out = node.predict(x)
        assert out.shape == (len(x), 10)
        assert (out.argmax(axis=1) == y).mean() > 0.8  # its own classes, learnt
    assert not np.array_equal(heads[1], heads[2])
