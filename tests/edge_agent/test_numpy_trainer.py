"""The numpy trainer against the torch trainer it mirrors, on the same data, seed and plan.

Tolerance: both compute in float32 but sum in different orders, so weights
agree to ``ATOL`` (one W1-shaped round from the same start differed by at most
1.2e-7 on mnist-logreg and linreg when this was written; for MLPs, one round from shard 0
differed by at most 8.9e-8 on blobs (10-100-10), 4.5e-8 on digits (64-64-10) and 1.5e-8 on
W1's 2NN, 07:37 UTC); metrics to 1e-5 relative.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from edge_agent.numpy_trainer import NumpyTrainer
from edge_agent.torch_trainer import TorchTrainer, initial_weights
from fedmq.tasks import DataConfig, ModelSpec, agent_data, get_task
from protocol import TrainPlan

ATOL = 1e-5
W1_PLAN = TrainPlan(epochs=1, batch_size=32, lr=0.05, seed=0)


def _pair(task_name: str, spec: ModelSpec, shard: int, shards: int):
    task = get_task(task_name)
    x, y = agent_data(task, DataConfig(), shard, shards)
    return (
        NumpyTrainer(spec, task.kind, x, y, index=shard),
        TorchTrainer(spec, task.kind, x, y, index=shard, threads=1),
        task,
    )


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name, want in b.items():
        assert a[name].dtype == np.float32 and a[name].shape == want.shape
        np.testing.assert_allclose(a[name], want, rtol=0, atol=ATOL, err_msg=name)


@pytest.mark.parametrize(
    ("plan", "round_no"),
    [(W1_PLAN, 1), (W1_PLAN, 7), (TrainPlan(epochs=3, batch_size=7, lr=0.2, seed=5), 2)],
)
def test_softmax_regression_matches_torch(plan: TrainPlan, round_no: int) -> None:
    spec = ModelSpec("linear", (10, 10))
    numpy_t, torch_t, _ = _pair("mlp", spec, shard=3, shards=10)  # 500 blob rows
    start = initial_weights(spec, seed=0)
    got = numpy_t.train(start, plan, round_no)
    want = torch_t.train(start, plan, round_no)
    _assert_same(got.weights, want.weights)
    assert got.samples == want.samples == 500
    assert got.metrics.keys() == want.metrics.keys() == {"loss", "accuracy"}
    assert got.metrics["accuracy"] == want.metrics["accuracy"]
    assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-5)
    assert not np.allclose(got.weights["0.weight"], start["0.weight"])  # it did train


def test_linear_regression_matches_torch() -> None:
    task = get_task("linreg")
    numpy_t, torch_t, _ = _pair("linreg", task.model, shard=1, shards=4)
    start = initial_weights(task.model, seed=0)
    got = numpy_t.train(start, replace(task.plan, epochs=2), 3)
    want = torch_t.train(start, replace(task.plan, epochs=2), 3)
    _assert_same(got.weights, want.weights)
    assert got.metrics["mse"] == pytest.approx(want.metrics["mse"], rel=1e-5)
    evaluated = numpy_t.evaluate(got.weights)
    assert evaluated["mse"] == pytest.approx(torch_t.evaluate(want.weights)["mse"], rel=1e-5)


@pytest.mark.parametrize(
    ("plan", "round_no"),
    [(W1_PLAN, 1), (TrainPlan(epochs=3, batch_size=7, lr=0.2, seed=5), 4)],
)
def test_mlp_matches_torch(plan: TrainPlan, round_no: int) -> None:
    task = get_task("mlp")  # MLP 10-100-10 on 500 blob rows
    numpy_t, torch_t, _ = _pair("mlp", task.model, shard=2, shards=10)
    start = initial_weights(task.model, seed=0)
    got = numpy_t.train(start, plan, round_no)
    want = torch_t.train(start, plan, round_no)
    _assert_same(got.weights, want.weights)
    assert list(got.weights) == list(want.weights)  # nn.Sequential's names and order
    assert got.metrics["accuracy"] == want.metrics["accuracy"]
    assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-5)
    evaluated = numpy_t.evaluate(got.weights)
    assert evaluated["loss"] == pytest.approx(torch_t.evaluate(want.weights)["loss"], rel=1e-5)


def test_digits_mlp_matches_torch() -> None:
    task = get_task("digits")  # MLP 64-64-10, the demo task
    numpy_t, torch_t, _ = _pair("digits", task.model, shard=0, shards=10)
    start = initial_weights(task.model, seed=0)
    got, want = numpy_t.train(start, task.plan, 1), torch_t.train(start, task.plan, 1)
    _assert_same(got.weights, want.weights)


@pytest.mark.usefixtures("real_mnist")
def test_mnist_2nn_w1_round_matches_torch() -> None:
    task = get_task("mnist-2nn")
    numpy_t, torch_t, _ = _pair("mnist-2nn", task.model, shard=0, shards=20)
    start = initial_weights(task.model, seed=0)
    got, want = numpy_t.train(start, task.plan, 1), torch_t.train(start, task.plan, 1)
    _assert_same(got.weights, want.weights)
    assert got.metrics["accuracy"] == want.metrics["accuracy"]


@pytest.mark.usefixtures("real_mnist")
def test_mnist_logreg_w1_round_matches_torch() -> None:
    task = get_task("mnist-logreg")
    numpy_t, torch_t, _ = _pair("mnist-logreg", task.model, shard=0, shards=20)
    start = initial_weights(task.model, seed=0)
    got, want = numpy_t.train(start, task.plan, 1), torch_t.train(start, task.plan, 1)
    _assert_same(got.weights, want.weights)
    assert numpy_t.evaluate(got.weights)["accuracy"] == torch_t.evaluate(want.weights)["accuracy"]


def test_never_mutates_the_global_weights() -> None:
    spec = ModelSpec("linear", (10, 10))
    numpy_t, _, _ = _pair("mlp", spec, shard=0, shards=10)
    start = initial_weights(spec, seed=0)
    before = {k: v.copy() for k, v in start.items()}
    for arr in start.values():
        arr.setflags(write=False)  # wire weights are read-only views
    numpy_t.train(start, W1_PLAN, 1)
    for name, arr in start.items():
        np.testing.assert_array_equal(arr, before[name])


def test_zero_epochs_returns_the_weights_and_their_metrics() -> None:
    spec = ModelSpec("linear", (10, 10))
    numpy_t, torch_t, _ = _pair("mlp", spec, shard=0, shards=10)
    start = initial_weights(spec, seed=0)
    got = numpy_t.train(start, replace(W1_PLAN, epochs=0), 1)
    _assert_same(got.weights, start)
    assert got.metrics["accuracy"] == torch_t.evaluate(start)["accuracy"]


def test_refuses_what_it_cannot_train() -> None:
    task = get_task("mlp")
    x, y = agent_data(task, DataConfig(), 0, 10)
    with pytest.raises(ValueError, match="cnn"):
        NumpyTrainer(ModelSpec("cnn"), task.kind, x, y, index=0)
    trainer = NumpyTrainer(ModelSpec("linear", (10, 10)), task.kind, x, y, index=0)
    with pytest.raises(ValueError, match="shape"):
        trainer.train({"0.weight": np.zeros((10, 9), np.float32),
                       "0.bias": np.zeros(10, np.float32)}, W1_PLAN, 1)
    with pytest.raises(ValueError, match="labels"):
        NumpyTrainer(ModelSpec("linear", (10, 3)), task.kind, x, y, index=0)


def test_imports_no_torch() -> None:
    code = "import sys, edge_agent.numpy_trainer; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
