"""Personal layers, fine-tuning, the device model and its file, without a broker."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import msgpack
import numpy as np
import pytest

from edge_agent.device_model import load_device_model, save_device_model
from edge_agent.numpy_trainer import NumpyTrainer
from edge_agent.personal import (
    LOCAL_LAYERS,
    DeviceTrainer,
    local_layers,
    shared_weights,
    with_local_layers,
)
from edge_agent.torch_trainer import TorchTrainer, initial_weights
from edge_agent.trainer import TrainResult
from fedmq.tasks import DataConfig, agent_data, get_task
from protocol import TrainPlan, Weights

BLOBS = get_task("mlp")  # MLP 10-100-10: "0.*" hidden, "2.*" the head
HEAD = ("2.weight", "2.bias")
PLAN = TrainPlan(epochs=2, batch_size=16, lr=0.1, seed=0)
PER_PLAN = with_local_layers(PLAN, HEAD)


def _torch(shard: int = 1) -> TorchTrainer:
    x, y = agent_data(BLOBS, DataConfig(), shard, 10, "shards")
    return TorchTrainer(BLOBS.model, BLOBS.kind, x, y, index=shard, threads=1)


def _global() -> Weights:
    return shared_weights(initial_weights(BLOBS.model, seed=0), HEAD)


class Spy:
    """A LocalModel that records the whole weights each training started from."""

    def __init__(self, inner: TorchTrainer) -> None:
        self.inner, self.name, self.samples = inner, inner.name, inner.samples
        self.started: list[Weights] = []

    def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult:
        self.started.append({n: np.array(a) for n, a in weights.items()})
        return self.inner.train(weights, plan, round_no)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        return self.inner.evaluate(weights)

    def initial_weights(self, seed: int) -> Weights:
        return self.inner.initial_weights(seed)

    def predict(self, weights: Weights, x: np.ndarray) -> np.ndarray:
        return self.inner.predict(weights, x)


def test_local_layers_come_from_the_plan_and_are_checked() -> None:
    assert local_layers(PLAN) == ()
    assert local_layers(PER_PLAN) == HEAD
    assert PER_PLAN.options == {LOCAL_LAYERS: "2.weight,2.bias"}
    assert with_local_layers(PER_PLAN, ()).options == {}
    for bad in ("a,,b", "a,a", " , "):
        with pytest.raises(ValueError, match=LOCAL_LAYERS):
            local_layers(replace(PLAN, options={LOCAL_LAYERS: bad}))
    with pytest.raises(ValueError, match="string"):
        local_layers(replace(PLAN, options={LOCAL_LAYERS: 3}))


def test_the_global_model_is_the_shared_layers() -> None:
    full = initial_weights(BLOBS.model, seed=0)
    assert list(shared_weights(full, HEAD)) == ["0.weight", "0.bias"]
    with pytest.raises(ValueError, match="not in the model"):
        shared_weights(full, ["9.weight"])
    with pytest.raises(ValueError, match="every layer"):
        shared_weights(full, list(full))


def test_training_returns_shared_layers_only_and_keeps_the_head() -> None:
    spy = Spy(_torch())
    device = DeviceTrainer(spy)
    glob = _global()
    first = device.train(glob, PER_PLAN, 1)
    assert list(first.weights) == list(glob)  # nothing personal goes back to the core
    head_1 = device.personal
    assert list(head_1) == list(HEAD)
    # The head starts as the coordinator's round-0 values (same seed): round 1 is FedAvg's.
    init = initial_weights(BLOBS.model, seed=0)
    for name in HEAD:
        np.testing.assert_array_equal(spy.started[0][name], init[name])
        assert not np.array_equal(head_1[name], init[name])
    # Round 2 starts from the head round 1 left, not from the init, and moves it on.
    device.train(first.weights, PER_PLAN, 2)
    for name in HEAD:
        np.testing.assert_array_equal(spy.started[1][name], head_1[name])
        assert not np.array_equal(device.personal[name], head_1[name])


@pytest.mark.parametrize("plan", [PLAN, PER_PLAN], ids=["fedavg", "fedper"])
def test_the_device_model_never_holds_the_update_just_sent(plan: TrainPlan) -> None:
    # Saved to the state dir after each round: with the locally trained global layers and
    # the round's model, the update sent could be rebuilt. It holds the received ones.
    device = DeviceTrainer(_torch())
    glob = _global() if plan is PER_PLAN else initial_weights(BLOBS.model, seed=0)
    sent = device.train(glob, plan, 1).weights
    held = device.device_model
    assert held is not None
    for name in glob:
        np.testing.assert_array_equal(held[name], glob[name])
        assert not np.array_equal(held[name], sent[name])
    for name, layer in device.personal.items():  # the personal layers as trained
        np.testing.assert_array_equal(held[name], layer)


def test_two_devices_keep_different_heads() -> None:
    a, b = DeviceTrainer(_torch(1)), DeviceTrainer(_torch(6))
    glob = _global()
    a.train(glob, PER_PLAN, 1)
    b.train(glob, PER_PLAN, 1)
    assert not np.array_equal(a.personal["2.weight"], b.personal["2.weight"])


def test_a_personal_layer_in_the_global_model_or_unknown_is_refused() -> None:
    device = DeviceTrainer(_torch())
    with pytest.raises(ValueError, match="arrived in the global model"):
        device.train(initial_weights(BLOBS.model, seed=0), PER_PLAN, 1)
    with pytest.raises(ValueError, match="not in the model"):
        device.train(_global(), with_local_layers(PLAN, ["7.weight"]), 1)


def test_without_local_layers_it_is_a_pass_through() -> None:
    start = initial_weights(BLOBS.model, seed=0)
    plain = _torch().train(start, PLAN, 3)
    wrapped = DeviceTrainer(_torch()).train(start, PLAN, 3)
    for name in start:
        np.testing.assert_array_equal(plain.weights[name], wrapped.weights[name])
    assert plain.metrics == wrapped.metrics


def test_predict_uses_the_device_model() -> None:
    inner = _torch(1)
    device = DeviceTrainer(inner)
    with pytest.raises(ValueError, match="no device model"):
        device.predict(np.zeros((1, 10), np.float32))
    glob = _global()
    for round_no in (1, 2, 3):
        glob = device.train(glob, PER_PLAN, round_no).weights
    x, y = agent_data(BLOBS, DataConfig(), 1, 10, "shards")
    out = device.predict(x)
    assert out.shape == (len(x), 10) and out.dtype == np.float32
    assert device.device_model is not None
    np.testing.assert_array_equal(out, inner.predict(device.device_model, x))
    assert (out.argmax(axis=1) == y).mean() > 0.9  # its own two classes, learnt


def test_fine_tuning_changes_the_device_model_but_not_what_is_sent() -> None:
    plain, tuned = DeviceTrainer(_torch()), DeviceTrainer(_torch(), finetune_epochs=3)
    glob = _global()
    for round_no in (1, 2):
        sent_plain = plain.train(glob, PER_PLAN, round_no).weights
        sent_tuned = tuned.train(glob, PER_PLAN, round_no).weights
        for name in glob:
            np.testing.assert_array_equal(sent_plain[name], sent_tuned[name])
        glob = sent_plain
    final_plain = plain.adopt(glob, PER_PLAN)
    final_tuned = tuned.adopt(glob, PER_PLAN)
    for name in glob:  # no fine-tuning: the device model is the global model, completed
        np.testing.assert_array_equal(final_plain[name], glob[name])
    assert not np.array_equal(final_tuned["0.weight"], glob["0.weight"])
    x, _ = agent_data(BLOBS, DataConfig(), 1, 10, "shards")
    assert not np.array_equal(plain.predict(x), tuned.predict(x))
    # and the personal layers the next round starts from are the same for both
    for name in HEAD:
        np.testing.assert_array_equal(plain.personal[name], tuned.personal[name])
    np.testing.assert_array_equal(
        plain.train(glob, PER_PLAN, 3).weights["0.weight"],
        tuned.train(glob, PER_PLAN, 3).weights["0.weight"],
    )


def test_a_numpy_device_gets_a_seeded_head_and_predicts() -> None:
    x, y = agent_data(BLOBS, DataConfig(), 4, 10, "shards")
    a = NumpyTrainer(BLOBS.model, BLOBS.kind, x, y, index=4)
    b = NumpyTrainer(BLOBS.model, BLOBS.kind, x, y, index=4)
    for name, arr in a.initial_weights(7).items():
        np.testing.assert_array_equal(arr, b.initial_weights(7)[name])
    device = DeviceTrainer(a, init_seed=7)
    device.train(_global(), PER_PLAN, 1)
    assert device.predict(x).shape == (len(x), 10)


def test_the_device_model_file_round_trips_atomically(tmp_path: Path) -> None:
    device = DeviceTrainer(_torch())
    device.train(_global(), PER_PLAN, 1)
    weights = device.device_model
    assert weights is not None
    path = tmp_path / "agent-1" / "device-model.msgpack"
    save_device_model(path, weights)
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    loaded = load_device_model(path)
    assert loaded is not None and list(loaded) == list(weights)
    for name, arr in weights.items():
        np.testing.assert_array_equal(loaded[name], arr)
        assert loaded[name].flags.writeable
    doc = msgpack.unpackb(path.read_bytes())  # plain msgpack, readable without fedmq
    assert doc["type"] == "device-model" and doc["v"] == 1
    # a restarted device picks its personal layers up from the file
    spy = Spy(_torch())
    DeviceTrainer(spy, saved=loaded).train(_global(), PER_PLAN, 2)
    for name in HEAD:
        np.testing.assert_array_equal(spy.started[0][name], weights[name])


def test_a_missing_or_corrupt_device_model_file(tmp_path: Path) -> None:
    assert load_device_model(tmp_path / "none.msgpack") is None
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x81\xa4type\xa3bad")
    with pytest.raises(ValueError, match="not a version-1"):
        load_device_model(bad)
    bad.write_bytes(b"\xc1garbage")
    with pytest.raises(ValueError, match="unreadable"):
        load_device_model(bad)
    nan = {"w": np.array([np.nan], np.float32)}
    save_device_model(bad, nan)
    with pytest.raises(ValueError, match="NaN"):
        load_device_model(bad)
