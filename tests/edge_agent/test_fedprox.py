"""FedProx: mu in the plan, the proximal gradient in both trainers.

Tolerance for numpy vs torch with mu > 0: the same float32 arithmetic summed in
different orders, so weights agree to ``ATOL`` = 1e-5 absolute (the bound the
mu = 0 comparison in test_numpy_trainer.py uses); the largest differences seen
when written (07:45 UTC) were 8.9e-8 (linear 10-10) and 6.0e-8 (MLP 10-32-10).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np
import pytest

from edge_agent.agent import AgentCore, ModelArrived, Train, TrainingDone
from edge_agent.numpy_trainer import NumpyTrainer
from edge_agent.personal import LOCAL_LAYERS
from edge_agent.proximal import MU, add_proximal_grad, proximal_mu
from edge_agent.torch_trainer import TorchTrainer, initial_weights
from fedmq.cli import parser
from fedmq.round_flags import _mu, round_config
from fedmq.tasks import DataConfig, ModelSpec, agent_data, get_task
from protocol import ModelAnnouncement, Publish, TrainPlan, Weights, encode_model, weights_digest

ATOL = 1e-5
PLAN = TrainPlan(epochs=3, batch_size=16, lr=0.1, seed=0)
BLOBS = get_task("mlp")  # synthetic blobs, 10 features, 10 classes


def _data(shard: int = 2) -> tuple[np.ndarray, np.ndarray]:
    return agent_data(BLOBS, DataConfig(), shard, 10, "shards")  # non-IID: 2 label shards


def _torch(spec: ModelSpec = BLOBS.model, shard: int = 2) -> TorchTrainer:
    return TorchTrainer(spec, BLOBS.kind, *_data(shard), index=shard, threads=1)


def _with_mu(plan: TrainPlan, mu: float) -> TrainPlan:
    return replace(plan, options={**plan.options, MU: mu})


def _distance(a: Weights, b: Weights) -> float:
    return math.sqrt(sum(float(np.sum((a[n] - b[n]) ** 2)) for n in a))


def _assert_equal(a: Weights, b: Weights) -> None:
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("make", [_torch, lambda: NumpyTrainer(BLOBS.model, BLOBS.kind,
                                                               *_data(), index=2)])
def test_mu_zero_is_fedavg_bit_for_bit(make: object) -> None:
    trainer = make()  # type: ignore[operator]
    start = initial_weights(BLOBS.model, seed=0)
    plain = trainer.train(start, PLAN, 1)
    zero = trainer.train(start, _with_mu(PLAN, 0.0), 1)
    _assert_equal(plain.weights, zero.weights)
    assert plain.metrics == zero.metrics


def _update_bytes(plan: TrainPlan) -> bytes:
    """One round through a real agent core: the update bytes it would publish."""
    trainer = _torch()
    weights = initial_weights(BLOBS.model, seed=0)
    model = ModelAnnouncement(
        job="prox", run="r1", round=1, model_id=weights_digest(weights), task="mlp",
        plan=plan, codec="none", deadline_s=30.0, weights=weights,
    )
    core = AgentCore("prox", "agent-2", samples=trainer.samples, trainer="torch")
    (train,) = core.handle(ModelArrived(encode_model(model)))
    assert isinstance(train, Train)
    result = trainer.train(train.model.weights, train.model.plan, train.model.round)
    sent = [a for a in core.handle(TrainingDone(train.key, result, 0.0)) if isinstance(a, Publish)]
    assert len(sent) == 1
    return sent[0].payload


def test_mu_zero_sends_the_same_update_as_fedavg() -> None:
    assert _update_bytes(PLAN) == _update_bytes(_with_mu(PLAN, 0.0))
    assert _update_bytes(PLAN) != _update_bytes(_with_mu(PLAN, 0.5))


def test_larger_mu_keeps_the_local_model_closer_to_the_global_one() -> None:
    trainer = _torch()
    start = initial_weights(BLOBS.model, seed=0)
    distances = [
        _distance(trainer.train(start, _with_mu(PLAN, mu), 1).weights, start)
        for mu in (0.0, 0.1, 1.0, 5.0)
    ]
    assert distances == sorted(distances, reverse=True)
    assert distances[-1] < 0.5 * distances[0]


def test_numpy_and_torch_agree_on_the_linear_model_with_mu() -> None:
    spec = ModelSpec("linear", (10, 10))
    x, y = _data(shard=5)
    start = initial_weights(spec, seed=0)
    plan = _with_mu(PLAN, 0.3)
    got = NumpyTrainer(spec, BLOBS.kind, x, y, index=5).train(start, plan, 4)
    want = TorchTrainer(spec, BLOBS.kind, x, y, index=5, threads=1).train(start, plan, 4)
    for name in want.weights:
        np.testing.assert_allclose(got.weights[name], want.weights[name], rtol=0, atol=ATOL)
    plain = TorchTrainer(spec, BLOBS.kind, x, y, index=5, threads=1).train(start, PLAN, 4)
    assert _distance(want.weights, plain.weights) > 100 * ATOL  # mu really acted
    assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-5)


def test_numpy_mlp_applies_mu_to_every_layer_like_torch() -> None:
    spec = ModelSpec("mlp", (10, 32, 10))
    x, y = _data(shard=1)
    start = initial_weights(spec, seed=0)
    plan = _with_mu(PLAN, 0.3)
    got = NumpyTrainer(spec, BLOBS.kind, x, y, index=1).train(start, plan, 2)
    want = TorchTrainer(spec, BLOBS.kind, x, y, index=1, threads=1).train(start, plan, 2)
    for name in want.weights:
        np.testing.assert_allclose(got.weights[name], want.weights[name], rtol=0, atol=ATOL)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_a_bad_mu_is_refused_with_its_value(bad: object) -> None:
    plan = replace(PLAN, options={MU: bad})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="'mu'"):
        proximal_mu(plan)
    with pytest.raises(ValueError, match="'mu'"):
        _torch().train(initial_weights(BLOBS.model, seed=0), plan, 1)


def test_mu_defaults_to_zero_and_accepts_integers() -> None:
    assert proximal_mu(PLAN) == 0.0
    assert proximal_mu(replace(PLAN, options={MU: 2})) == 2.0


def test_the_proximal_gradient_is_mu_times_the_distance() -> None:
    rng = np.random.default_rng(0)
    grad, w, w0 = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3))
    want = grad + np.float32(0.25) * (w - w0)
    np.testing.assert_array_equal(add_proximal_grad(grad.copy(), w, w0, 0.25), want)
    np.testing.assert_array_equal(add_proximal_grad(grad.copy(), w, w0, 0.0), grad)


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "x"])
def test_the_cli_refuses_a_bad_mu(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--mu"):
        _mu(bad)


def test_the_coordinator_cli_announces_mu_and_local_layers() -> None:
    def plan_of(*flags: str) -> TrainPlan:
        argv = ["coordinator", "--job", "j", "--broker", "mqtt://localhost", *flags]
        args = parser().parse_args(argv)
        return round_config(args, "j").plan

    assert plan_of("--task", "mnist-2nn").options == {}  # mu 0 is not even sent
    assert plan_of("--task", "mnist-2nn", "--mu", "0.01", "--local-layers", "4.weight,4.bias"
                   ).options == {MU: 0.01, LOCAL_LAYERS: "4.weight,4.bias"}
    assert plan_of("--task", "mnist-2nn-per").options == {LOCAL_LAYERS: "4.weight,4.bias"}
    assert plan_of("--task", "mnist-2nn-per", "--local-layers", "").options == {}
