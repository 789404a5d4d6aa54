"""In-process reference runs: plain FedAvg (the W1 oracle) and a centralised baseline.

Invariants: no MQTT, no threads, and no torch import of its own: local steps go
through :class:`edge_agent.torch_trainer.TorchTrainer`, the very code agents
run, while averaging is an independent ``np.average`` so a fedmq run over MQTT
can be checked against it. Timings exclude data loading and start-up (model
building, tensor conversion, the first optimiser's imports).

With the defaults, :func:`run_reference` is DESIGN.md's Workload W1: MNIST
2NN, 20 agents of 500, 20 rounds, every agent every round, ``torch.manual_seed(0)``
init, 1 epoch of batch-32 SGD at lr 0.05, sample-weighted FedAvg.

References: McMahan et al., "Communication-Efficient Learning of Deep Networks
from Decentralized Data" (AISTATS 2017), Algorithm 1 (FederatedAveraging).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

import numpy as np

from edge_agent.torch_trainer import TorchEvaluator, TorchTrainer, initial_weights
from fedmq.tasks import DataConfig, Task, agent_data, get_task, load_dataset, test_data
from protocol import TrainPlan, Weights, check_codec, decode_delta, encode_delta, weights_digest
from protocol.broadcast import DTYPES, delta_rng, encode_step, narrow
from protocol.compress import codec_pipeline

#: W1's two splits by their DESIGN.md names; any partition spec is accepted too
VARIANTS = {"iid": "iid", "noniid": "shards"}


class ReferenceRun(TypedDict):
    """What :func:`run_reference` measured; lists have one entry per round."""

    task: str
    partition: str
    agents: int
    rounds: int
    codec: str | None
    downlink_delta: str | None
    accuracy: list[float | None]
    loss: list[float]
    round_s: list[float]
    wall_s: float
    model_id: str
    weights: Weights


class CentralisedRun(TypedDict):
    """What :func:`run_centralised` measured; lists have one entry per epoch."""

    task: str
    epochs: int
    accuracy: list[float | None]
    loss: list[float]
    epoch_s: list[float]
    wall_s: float


def fedavg(results: list[tuple[Weights, int]]) -> Weights:
    """Sample-weighted mean of whole models, tensor by tensor, in float64 then float32."""
    names = list(results[0][0])
    samples = [n for _, n in results]
    return {
        name: np.average([w[name] for w, _ in results], axis=0, weights=samples).astype(np.float32)
        for name in names
    }


def codec_rng_key(agent_id: str) -> int:
    """The per-agent key of stochastic codecs' ``default_rng([plan.seed, round, key])``,
    as :mod:`edge_agent.agent` derives it, so reference and fleet draw the same noise."""
    return int.from_bytes(hashlib.sha256(agent_id.encode()).digest()[:8], "big")


def send_delta(
    delta: Weights, residual: Weights | None, codec: str, rng: np.random.Generator
) -> tuple[Weights, Weights]:
    """What the coordinator decodes of ``delta`` under ``codec``, and the new residual.

    Error feedback written out independently of :mod:`edge_agent.feedback`:
    send ``u = delta + residual``, keep ``u - decode(encode(u))`` for a biased
    codec, zero for a lossless or unbiased one (``qsgd`` alone), as agents do.
    """
    u = delta if residual is None else {n: delta[n] + residual[n] for n in delta}
    shapes = {name: arr.shape for name, arr in u.items()}
    sent = decode_delta(encode_delta(u, codec, rng), codec, shapes)
    if not codec_pipeline(codec).biased:
        return sent, {n: np.zeros_like(a, dtype=np.float32) for n, a in u.items()}
    return sent, {n: (u[n] - sent[n]).astype(np.float32) for n in u}


def _resolve(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def run_reference(
    variant: str = "iid",
    rounds: int = 20,
    data_dir: Path | str | None = None,
    codec: str | None = None,
    *,
    task: Task | str = "mnist-2nn",
    agents: int = 20,
    seed: int = 0,
    plan: TrainPlan | None = None,
    threads: int | None = None,
    agent_ids: Sequence[str] | None = None,
    downlink_delta: str | None = None,
    downlink: str = "fp32",
) -> ReferenceRun:
    """FedAvg in one process: every agent trains every round, then the mean is tested.

    ``variant`` is ``iid``, ``noniid`` (W1's shards) or any partition spec;
    ``seed`` seeds the initial model, the data and the partition; ``plan``
    defaults to the task's. Without ``codec`` the new model is the weighted
    mean of the local models (W1). With one, each agent's delta goes through
    :func:`send_delta` (codec plus error feedback, stochastic rounding keyed
    by ``agent_ids``, default ``agent-0``, ``agent-1``, ...) and the new model
    is the old one plus the weighted mean of what was decoded, as the
    coordinator computes it. ``round_s`` covers training, averaging and testing.

    Agents train from the broadcast model (docs/PROTOCOL.md §15): the global model
    narrowed to ``downlink`` (``fp32`` or ``fp16``), or, with ``downlink_delta``, the
    chain of versions :func:`protocol.broadcast.encode_step` makes towards the global
    model with the coordinator's rng; their deltas are against it, and the global
    model (the one tested) moves by their mean, as the coordinator's does.

    Raises:
        ValueError: for an unknown task, partition spec or codec.
    """
    the_task = _resolve(task)
    plan = plan or the_task.plan
    partition = VARIANTS.get(variant, variant)
    for spec in (codec, downlink_delta):
        if spec is not None:
            check_codec(spec)
    dtype = DTYPES[downlink]
    ids = list(agent_ids) if agent_ids is not None else [f"agent-{k}" for k in range(agents)]
    if len(ids) != agents:
        raise ValueError(f"{len(ids)} agent ids for {agents} agents")
    keys = [codec_rng_key(agent_id) for agent_id in ids]
    residuals: list[Weights | None] = [None] * agents
    cfg = DataConfig(data_dir=Path(data_dir) if data_dir is not None else None, seed=seed)
    trainers = [
        TorchTrainer(
            the_task.model,
            the_task.kind,
            *agent_data(the_task, cfg, k, agents, partition),
            index=k,
            threads=threads,
        )
        for k in range(agents)
    ]
    evaluator = TorchEvaluator(the_task.model, the_task.kind, *test_data(the_task, cfg))
    weights = initial_weights(the_task.model, seed)
    broadcast = narrow(weights, dtype)
    lossless_down = downlink_delta is None and downlink == "fp32"
    accuracy: list[float | None] = []
    loss: list[float] = []
    round_s: list[float] = []
    start = time.perf_counter()
    for round_no in range(1, rounds + 1):
        began = time.perf_counter()
        results = []
        for k, trainer in enumerate(trainers):
            local = trainer.train(broadcast, plan, round_no).weights
            if codec is None:
                results.append((local, trainer.samples))
                continue
            rng = np.random.default_rng([plan.seed, round_no, keys[k]])
            delta = {name: local[name] - broadcast[name] for name in broadcast}
            sent, residuals[k] = send_delta(delta, residuals[k], codec, rng)
            results.append((sent, trainer.samples))
        if codec is None and lossless_down:
            weights = fedavg(results)  # W1 exactly: the mean of the local models
        else:
            if codec is None:  # the local models' mean delta from what they trained from
                results = [({n: w[n] - broadcast[n] for n in w}, c) for w, c in results]
            mean_delta = fedavg(results)
            weights = {
                name: (w + mean_delta[name]).astype(np.float32) for name, w in weights.items()
            }
        if downlink_delta is None:
            broadcast = narrow(weights, dtype)
        else:
            _, broadcast = encode_step(
                broadcast, weights, downlink_delta, dtype, delta_rng(plan.seed, round_no)
            )
        metrics = evaluator.evaluate(weights)
        round_s.append(time.perf_counter() - began)
        accuracy.append(metrics.get("accuracy"))
        loss.append(metrics["loss"])
    return ReferenceRun(
        task=the_task.name,
        partition=partition,
        agents=agents,
        rounds=rounds,
        codec=codec,
        downlink_delta=downlink_delta,
        accuracy=accuracy,
        loss=loss,
        round_s=round_s,
        wall_s=time.perf_counter() - start,
        model_id=weights_digest(weights),
        weights=weights,
    )


def run_centralised(
    epochs: int = 20,
    data_dir: Path | str | None = None,
    *,
    task: Task | str = "mnist-2nn",
    seed: int = 0,
    plan: TrainPlan | None = None,
    threads: int | None = None,
) -> CentralisedRun:
    """One model on the union of all training data: the ceiling FedAvg is compared to.

    Epoch ``e`` (from 1) shuffles with ``default_rng([plan.seed, e, 0])``; the
    plan's batch size and learning rate apply, its epoch count does not.
    """
    the_task = _resolve(task)
    plan = replace(plan or the_task.plan, epochs=1)
    cfg = DataConfig(data_dir=Path(data_dir) if data_dir is not None else None, seed=seed)
    data = load_dataset(the_task, cfg)
    trainer = TorchTrainer(
        the_task.model, the_task.kind, data.x_train, data.y_train, index=0, threads=threads
    )
    evaluator = TorchEvaluator(the_task.model, the_task.kind, data.x_test, data.y_test)
    weights = initial_weights(the_task.model, seed)
    accuracy: list[float | None] = []
    loss: list[float] = []
    epoch_s: list[float] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        began = time.perf_counter()
        weights = trainer.train(weights, plan, epoch).weights
        metrics = evaluator.evaluate(weights)
        epoch_s.append(time.perf_counter() - began)
        accuracy.append(metrics.get("accuracy"))
        loss.append(metrics["loss"])
    return CentralisedRun(
        task=the_task.name,
        epochs=epochs,
        accuracy=accuracy,
        loss=loss,
        epoch_s=epoch_s,
        wall_s=time.perf_counter() - start,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m fedmq_tools.reference``: print one run's figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m fedmq_tools.reference", description=__doc__)
    parser.add_argument("--task", default="mnist-2nn")
    parser.add_argument("--variant", default="iid", help="iid, noniid, or a partition spec")
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--codec", default=None)
    parser.add_argument("--downlink-delta", default=None, help="codec of delta-coded models")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--centralised", action="store_true", help="train one model on all data")
    args = parser.parse_args(argv)
    if args.centralised:
        out: dict[str, object] = dict(
            run_centralised(args.rounds, args.data_dir, task=args.task, threads=args.threads)
        )
    else:
        run = run_reference(
            args.variant,
            args.rounds,
            args.data_dir,
            args.codec,
            task=args.task,
            agents=args.agents,
            threads=args.threads,
            downlink_delta=args.downlink_delta,
        )
        out = {k: v for k, v in run.items() if k != "weights"}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
