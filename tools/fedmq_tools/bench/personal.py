"""Personalisation on W1-noniid: a global model vs models fitted to each agent's own data.

In process, like :mod:`fedmq_tools.reference`: no broker, but every local step runs
through :class:`edge_agent.personal.DeviceTrainer` around
:class:`edge_agent.torch_trainer.TorchTrainer`, the code agents run, and
averaging is an independent sample-weighted ``np.average``.

Each agent's "own data" test is the 5,000 held-out test images weighted by the
agent's training label mix: ``own = sum over labels l of p_k(l) * accuracy on the
test images of label l``, where ``p_k`` is the share of label ``l`` in agent
``k``'s 500 training rows (its two 250-row shards of label-sorted data, which can
straddle a label boundary). That is the expected accuracy on fresh data from the
agent's own distribution, and it leaves W1's training split untouched.

Rows: FedAvg (the final global model), FedAvg + local fine-tuning of that model,
FedPer (the head ``4.*`` kept on each device), FedProx (``mu``), and local-only
training (no federation, as many epochs as rounds) for context.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.personal import DeviceTrainer, shared_weights, with_local_layers
from edge_agent.proximal import MU
from edge_agent.torch_trainer import TorchTrainer, initial_weights
from fedmq.tasks import DataConfig, agent_data, get_task, test_data
from fedmq_tools.reference import fedavg
from protocol import TrainPlan, Weights

Labels = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class PersonalOptions:
    """W1-noniid by default: 20 agents of two 250-row label shards, 20 rounds, the 2NN."""

    agents: int = 20
    rounds: int = 20
    data_dir: Path | None = None
    finetune_epochs: int = 1
    mu: float = 0.01
    head: tuple[str, ...] = ("4.weight", "4.bias")
    task: str = "mnist-2nn"
    threads: int | None = 1


def label_mix(y_train: Labels, classes: int) -> npt.NDArray[np.float64]:
    """The share of each label in one agent's training rows."""
    counts = np.bincount(y_train, minlength=classes).astype(np.float64)
    mix: npt.NDArray[np.float64] = counts / counts.sum()
    return mix


def own_accuracy(
    predicted: Labels, y_test: Labels, mix: npt.NDArray[np.float64]
) -> float:
    """Test accuracy re-weighted to one agent's label mix (see the module docstring)."""
    total = 0.0
    for label in np.flatnonzero(mix):
        rows = y_test == label
        total += mix[label] * float((predicted[rows] == label).mean())
    return total


@dataclass(slots=True)
class _Setup:
    models: list[TorchTrainer]
    mixes: list[npt.NDArray[np.float64]]
    x_test: npt.NDArray[np.float32]
    y_test: Labels
    plan: TrainPlan
    init: Weights


def _setup(opts: PersonalOptions) -> _Setup:
    task = get_task(opts.task)
    cfg = DataConfig(data_dir=opts.data_dir)
    x_test, y_test = test_data(task, cfg)
    classes = int(y_test.max()) + 1
    models, mixes = [], []
    for k in range(opts.agents):
        x, y = agent_data(task, cfg, k, opts.agents, "shards")
        models.append(TorchTrainer(task.model, task.kind, x, y, index=k, threads=opts.threads))
        mixes.append(label_mix(np.asarray(y, dtype=np.int64), classes))
    return _Setup(models, mixes, x_test, np.asarray(y_test, np.int64), task.plan,
                  initial_weights(task.model, seed=0))


def _federate(
    devices: list[DeviceTrainer], plan: TrainPlan, start: Weights, rounds: int
) -> tuple[Weights, float]:
    """``rounds`` of every agent training then sample-weighted averaging; (model, seconds)."""
    weights = start
    began = time.perf_counter()
    for round_no in range(1, rounds + 1):
        results = [(d.train(weights, plan, round_no).weights, d.samples) for d in devices]
        weights = fedavg(results)
    return weights, time.perf_counter() - began


def _score(setup: _Setup, models: list[Weights]) -> dict[str, Any]:
    """Own-data accuracy of agent k's model ``models[k]``; one global model is scored once."""
    own, test = [], []
    cache: dict[int, Labels] = {}
    for k, (weights, mix) in enumerate(zip(models, setup.mixes, strict=True)):
        if id(weights) not in cache:
            logits = setup.models[k].predict(weights, setup.x_test)
            cache[id(weights)] = logits.argmax(axis=1)
        predicted = cache[id(weights)]
        own.append(own_accuracy(predicted, setup.y_test, mix))
        test.append(float((predicted == setup.y_test).mean()))
    return {
        "own_accuracy_mean": float(np.mean(own)),
        "own_accuracy_min": float(np.min(own)),
        "own_accuracy": own,
        "test_accuracy_mean": float(np.mean(test)),
    }


def run_personal(opts: PersonalOptions) -> dict[str, Any]:
    """Every row's figures, plus the options; times exclude data loading."""
    setup = _setup(opts)
    plan = setup.plan
    rows: dict[str, dict[str, Any]] = {}

    devices = [DeviceTrainer(m, finetune_epochs=opts.finetune_epochs) for m in setup.models]
    everyone = len(devices)
    glob, wall = _federate(devices, plan, setup.init, opts.rounds)
    rows["fedavg"] = {**_score(setup, [glob] * everyone), "wall_s": wall}
    began = time.perf_counter()
    tuned = [d.adopt(glob, plan) for d in devices]
    rows["fedavg_finetune"] = {**_score(setup, tuned), "wall_s": wall + time.perf_counter() - began}

    per_plan = with_local_layers(plan, opts.head)
    devices = [DeviceTrainer(m) for m in setup.models]
    start = shared_weights(setup.init, opts.head)
    shared, wall = _federate(devices, per_plan, start, opts.rounds)
    personal = [d.adopt(shared, per_plan) for d in devices]
    rows["fedper"] = {**_score(setup, personal), "wall_s": wall}

    prox_plan = replace(plan, options={**plan.options, MU: opts.mu})
    devices = [DeviceTrainer(m) for m in setup.models]
    glob, wall = _federate(devices, prox_plan, setup.init, opts.rounds)
    rows["fedprox"] = {**_score(setup, [glob] * everyone), "wall_s": wall}

    began = time.perf_counter()
    local = []
    for model in setup.models:
        weights = setup.init
        for epoch in range(1, opts.rounds + 1):
            weights = model.train(weights, plan, epoch).weights
        local.append(weights)
    rows["local_only"] = {**_score(setup, local), "wall_s": time.perf_counter() - began}
    return {
        "options": {
            "task": opts.task,
            "agents": opts.agents,
            "rounds": opts.rounds,
            "partition": "shards (W1-noniid)",
            "finetune_epochs": opts.finetune_epochs,
            "mu": opts.mu,
            "head": list(opts.head),
            "plan": {"epochs": plan.epochs, "batch_size": plan.batch_size, "lr": plan.lr},
            "own_data": "test images weighted by each agent's training label mix",
        },
        "rows": rows,
    }


#: the rows in the order the table lists them, with their labels
ROW_LABELS = {
    "fedavg": "FedAvg, global model",
    "fedavg_finetune": "FedAvg + local fine-tuning",
    "fedper": "FedPer (personal head)",
    "fedprox": "FedProx, global model",
    "local_only": "local only (no federation)",
}


def report(doc: dict[str, Any]) -> str:
    """The results as a markdown table."""
    lines = [
        "| model | own-data accuracy, mean | own-data accuracy, worst agent "
        "| accuracy on all 5,000 test images | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in ROW_LABELS.items():
        r = doc["rows"][key]
        lines.append(
            f"| {label} | {r['own_accuracy_mean']:.4f} | {r['own_accuracy_min']:.4f} "
            f"| {r['test_accuracy_mean']:.4f} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)
