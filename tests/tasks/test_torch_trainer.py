"""The torch trainer: W1's model and init, exact local SGD, metrics, no mutation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edge_agent.torch_trainer import TorchEvaluator, TorchTrainer, build_module, initial_weights
from edge_agent.trainer import Trainer
from fedmq.tasks import TASKS, DataConfig, ModelSpec, agent_data, get_task
from protocol import TrainPlan, Weights

MLP = ModelSpec("mlp", (6, 8, 3))


def _data(
    n: int = 37, d: int = 6, classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int64)
    return x, y


def _frozen(weights: Weights) -> Weights:
    out = {k: v.copy() for k, v in weights.items()}
    for v in out.values():
        v.setflags(write=False)
    return out


def test_2nn_matches_w1_definition() -> None:
    spec = get_task("mnist-2nn").model
    weights = initial_weights(spec, 0)
    torch.manual_seed(0)
    w1 = nn.Sequential(
        nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10)
    )
    assert list(weights) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    for name, tensor in w1.state_dict().items():
        assert weights[name].dtype == np.float32 and weights[name].flags.c_contiguous
        assert np.array_equal(weights[name], tensor.numpy())
    assert sum(v.size for v in weights.values()) == 199_210


def test_initial_weights_leave_torch_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    initial_weights(MLP, 0)
    assert torch.equal(torch.rand(3), expected)
    assert not np.array_equal(
        initial_weights(MLP, 0)["0.weight"], initial_weights(MLP, 1)["0.weight"]
    )


def test_cnn_is_the_fedavg_paper_cnn() -> None:
    module = build_module(ModelSpec("cnn"))
    assert sum(p.numel() for p in module.parameters()) == 1_663_370
    assert module(torch.zeros(2, 784)).shape == (2, 10)


def test_linear_is_one_layer() -> None:
    assert list(initial_weights(ModelSpec("linear", (784, 10)), 0)) == ["0.weight", "0.bias"]


def test_custom_factory_must_return_a_module() -> None:
    with pytest.raises(ValueError, match=r"returned dict, not an nn\.Module"):
        build_module(ModelSpec("custom", factory="builtins:dict"))
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        build_module(ModelSpec("custom", factory="no_such_module_xyz:build"))


def test_trainer_satisfies_protocol() -> None:
    trainer: Trainer = TorchTrainer(MLP, "classification", *_data(), index=0)
    assert trainer.name == "torch" and trainer.samples == 37


def _oracle_sgd(
    weights: Weights, x: np.ndarray, y: np.ndarray, plan: TrainPlan, *, round_no: int, index: int
) -> Weights:
    """W1's local step on ``MLP`` written out longhand, independently of the trainer."""
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    model.load_state_dict({n: torch.tensor(v) for n, v in weights.items()})
    opt = torch.optim.SGD(model.parameters(), lr=plan.lr)
    rng = np.random.default_rng([plan.seed, round_no, index])
    for _ in range(plan.epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), plan.batch_size):
            rows = order[i : i + plan.batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.tensor(x[rows])), torch.tensor(y[rows]))
            torch.autograd.backward(loss)
            opt.step()
    return {n: t.numpy().copy() for n, t in model.state_dict().items()}


@pytest.mark.parametrize("epochs", [1, 3])
def test_train_is_exactly_plain_sgd(epochs: int) -> None:
    x, y = _data()
    plan = TrainPlan(epochs=epochs, batch_size=8, lr=0.1, seed=4)
    weights = _frozen(initial_weights(MLP, 0))
    x.setflags(write=False)
    y.setflags(write=False)
    result = TorchTrainer(MLP, "classification", x, y, index=2).train(weights, plan, 5)
    want = _oracle_sgd(weights, x, y, plan, round_no=5, index=2)
    assert list(result.weights) == list(want)
    for name in want:
        assert result.weights[name].dtype == np.float32
        assert np.array_equal(result.weights[name], want[name]), name
    assert result.samples == 37
    assert np.array_equal(weights["0.weight"], initial_weights(MLP, 0)["0.weight"])


def test_train_is_deterministic_per_round_and_agent() -> None:
    x, y = _data()
    plan = TrainPlan(batch_size=4, lr=0.1)
    w = initial_weights(MLP, 0)
    a = TorchTrainer(MLP, "classification", x, y, index=0)
    b = TorchTrainer(MLP, "classification", x, y, index=0)
    other = TorchTrainer(MLP, "classification", x, y, index=1)
    first = a.train(w, plan, 1).weights["0.weight"]
    assert np.array_equal(first, b.train(w, plan, 1).weights["0.weight"])
    assert np.array_equal(first, a.train(w, plan, 1).weights["0.weight"])  # no state carried over
    assert not np.array_equal(first, a.train(w, plan, 2).weights["0.weight"])
    assert not np.array_equal(first, other.train(w, plan, 1).weights["0.weight"])


def test_train_metrics_are_weighted_means() -> None:
    x, y = _data(n=10)
    plan = TrainPlan(batch_size=4, lr=0.0)  # lr 0: the model stays put, so metrics are exact
    w = initial_weights(MLP, 0)
    trainer = TorchTrainer(MLP, "classification", x, y, index=0)
    metrics = trainer.train(w, plan, 1).metrics
    assert metrics == pytest.approx(trainer.evaluate(w), rel=1e-6)
    assert set(metrics) == {"loss", "accuracy"}


def test_zero_epochs_returns_the_weights_and_their_metrics() -> None:
    x, y = _data()
    w = initial_weights(MLP, 0)
    trainer = TorchTrainer(MLP, "classification", x, y, index=0)
    result = trainer.train(w, TrainPlan(epochs=0), 1)
    assert all(np.array_equal(result.weights[n], w[n]) for n in w)
    assert result.metrics == trainer.evaluate(w)


def test_evaluate_classification_by_hand() -> None:
    x, y = _data(n=2500)  # spans three evaluation batches
    w = initial_weights(MLP, 3)
    got = TorchEvaluator(MLP, "classification", x, y).evaluate(w)
    model = build_module(MLP)
    model.load_state_dict({n: torch.tensor(v) for n, v in w.items()})
    with torch.no_grad():
        out = model(torch.tensor(x))
    assert got["accuracy"] == float((out.argmax(1).numpy() == y).mean())
    assert got["loss"] == pytest.approx(
        float(nn.functional.cross_entropy(out, torch.tensor(y))), rel=1e-5
    )
    assert got == TorchTrainer(MLP, "classification", x, y, index=0).evaluate(w)


def test_regression_reports_mse_and_learns() -> None:
    task = get_task("linreg")
    x, y = agent_data(task, DataConfig(), 0, 2)
    trainer = TorchTrainer(task.model, task.kind, x, y, index=0)
    w = initial_weights(task.model, 0)
    start = trainer.evaluate(w)
    assert set(start) == {"loss", "mse"} and start["loss"] == start["mse"]
    for r in range(1, 4):
        result = trainer.train(w, task.plan, r)
        w = result.weights
    assert set(result.metrics) == {"loss", "mse"}
    assert trainer.evaluate(w)["mse"] < 0.05 < start["mse"]


def test_regression_accepts_2d_targets() -> None:
    x, _ = _data()
    y = np.random.default_rng(0).normal(size=(37, 3)).astype(np.float32)
    spec = ModelSpec("linear", (6, 3))
    metrics = (
        TorchTrainer(spec, "regression", x, y, index=0)
        .train(initial_weights(spec, 0), TrainPlan(), 1)
        .metrics
    )
    assert np.isfinite(metrics["mse"])


def test_wrong_weights_are_refused() -> None:
    trainer = TorchTrainer(MLP, "classification", *_data(), index=0)
    w = initial_weights(MLP, 0)
    with pytest.raises(ValueError, match="weights name"):
        trainer.train({k: w[k] for k in reversed(list(w))}, TrainPlan(), 1)
    w["0.weight"] = np.zeros((8, 5), np.float32)
    with pytest.raises(ValueError, match=r"0.weight: weights shape \(8, 5\), model \(8, 6\)"):
        trainer.evaluate(w)


def test_float_labels_are_refused_for_classification() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="class labels must be 1-D integers, got float32"):
        TorchTrainer(MLP, "classification", x, y.astype(np.float32), index=0)


def test_threads_are_honoured() -> None:
    before = torch.get_num_threads()
    try:
        TorchTrainer(MLP, "classification", *_data(), index=0, threads=1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be >= 1"):
            TorchTrainer(MLP, "classification", *_data(), index=0, threads=0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", TASKS)
def test_every_builtin_task_trains_end_to_end(name: str) -> None:
    task = get_task(name)
    x, y = agent_data(task, DataConfig(), 0, 50 if name.startswith("mnist") else 4)
    x, y = x[:200], y[:200]
    trainer = TorchTrainer(task.model, task.kind, x, y, index=0)
    w = initial_weights(task.model, 0)
    before = trainer.evaluate(w)["loss"]
    result = trainer.train(w, task.plan, 1)
    after = trainer.evaluate(result.weights)["loss"]
    assert np.isfinite(after) and after < before
