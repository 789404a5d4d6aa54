"""``fedmq bench strategies``: server optimisers, FedProx, sampling and DP on W1-noniid.

In process, without a broker: the real round machine (:class:`coordinator.Rounds`,
with its aggregators, server optimisers, cohort draws, DP noise and accountant)
and one real agent core (:class:`edge_agent.agent.AgentCore`) per agent, each
training with :class:`edge_agent.torch_trainer.TorchTrainer` as agents do. Every
message goes through the real encoders and decoders; a loop hands each publish to
its subscribers, as a broker would, so only MQTT and the clock are left out (no
deadline ever passes: every agent asked answers).

Rows: FedAvg, then one per ``--server-opt`` spec, per FedProx ``--mu``, per
``--sample-fraction`` and per DP noise multiplier (``--dp-noise``, with
``--dp-clip``). Each row starts from the same initial model (``torch.manual_seed(0)``)
and the same data split, and reports test accuracy per round and, for DP rows,
the run's epsilon at ``--dp-delta`` after every round.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coordinator import (
    BrokerConnected,
    Evaluate,
    Evaluated,
    Event,
    PresenceArrived,
    RoundClosed,
    RoundConfig,
    Rounds,
    Stop,
    UpdateArrived,
)
from edge_agent.agent import AgentCore, AgentEvent, Connected, ModelArrived, Train, TrainingDone
from edge_agent.proximal import MU
from edge_agent.torch_trainer import TorchEvaluator, TorchTrainer, initial_weights
from fedmq.tasks import DataConfig, agent_data, get_task, test_data
from fedmq_tools.reference import VARIANTS
from protocol import Publish, RoundMetrics, TopicKind, parse_topic

JOB = "bench-strategies"
#: each server optimiser with fedmq's defaults (coordinator/optimisers.py)
DEFAULT_SERVER_OPTS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")
COORDINATOR = ":coordinator"


@dataclass(frozen=True, slots=True)
class Row:
    """One configuration to run: a label and the coordinator settings it changes."""

    label: str
    server_opt: str = "fedavg"
    mu: float = 0.0
    sample_fraction: float | None = None
    dp_noise: float | None = None
    dp_clip: float | None = None


@dataclass(frozen=True, slots=True)
class StrategiesOptions:
    """W1-noniid by default: 20 agents of two 250-row label shards, 20 rounds, the 2NN."""

    variant: str = "noniid"
    agents: int = 20
    rounds: int = 20
    task: str = "mnist-2nn"
    data_dir: Path | None = None
    threads: int | None = 1
    server_opts: tuple[str, ...] = DEFAULT_SERVER_OPTS
    mus: tuple[float, ...] = (0.01,)
    sample_fractions: tuple[float, ...] = (0.5,)
    dp_noises: tuple[float, ...] = (0.1, 1.0)
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    seed: int = 0

    def all_rows(self) -> list[Row]:
        """FedAvg, then the rows the options ask for, in a fixed order."""
        rows = [Row("fedavg")]
        rows += [Row(f"server-opt {s}", server_opt=s) for s in self.server_opts]
        rows += [Row(f"fedprox mu={mu:g}", mu=mu) for mu in self.mus]
        rows += [Row(f"sample {f:g}", sample_fraction=f) for f in self.sample_fractions]
        rows += [
            Row(f"dp z={z:g} C={self.dp_clip:g}", dp_noise=z, dp_clip=self.dp_clip)
            for z in self.dp_noises
        ]
        return rows


class _Setup:
    """Data, trainers and evaluator, built once and shared by every row."""

    def __init__(self, opts: StrategiesOptions) -> None:
        self.task = get_task(opts.task)
        cfg = DataConfig(data_dir=opts.data_dir, seed=opts.seed)
        partition = VARIANTS.get(opts.variant, opts.variant)
        self.trainers = {
            f"agent-{k}": TorchTrainer(
                self.task.model, self.task.kind,
                *agent_data(self.task, cfg, k, opts.agents, partition),
                index=k, threads=opts.threads,
            )
            for k in range(opts.agents)
        }
        self.evaluator = TorchEvaluator(self.task.model, self.task.kind,
                                        *test_data(self.task, cfg), threads=opts.threads)
        self.weights = initial_weights(self.task.model, opts.seed)


def _config(opts: StrategiesOptions, row: Row) -> RoundConfig:
    plan = get_task(opts.task).plan
    if row.mu:
        plan = replace(plan, options={**plan.options, MU: row.mu})
    return RoundConfig(
        job=JOB, task=opts.task, rounds=opts.rounds, plan=plan, deadline_s=3600.0,
        min_agents=opts.agents, server_opt=row.server_opt,
        sample_fraction=row.sample_fraction, dp_noise=row.dp_noise, dp_clip=row.dp_clip,
        dp_delta=opts.dp_delta, sample_seed=opts.seed, dp_seed=opts.seed,
    )


class _Loopback:
    """A broker in a loop: each publish goes to whoever subscribes to its topic, in order."""

    def __init__(self, rounds: Rounds, setup: _Setup) -> None:
        self.rounds, self.setup = rounds, setup
        self.cores = {
            a: AgentCore(JOB, a, samples=t.samples, trainer=t.name)
            for a, t in setup.trainers.items()
        }
        self.to_coordinator: deque[Event] = deque([BrokerConnected()])
        self.to_agents: deque[tuple[str, AgentEvent]] = deque((a, Connected()) for a in self.cores)
        self.closed: list[RoundMetrics] = []
        self.train_s = 0.0
        self.stopped = False

    def run(self) -> None:
        while (self.to_coordinator or self.to_agents) and not self.stopped:
            if self.to_coordinator:
                self._coordinator(self.to_coordinator.popleft())
            else:
                self._agent(*self.to_agents.popleft())

    def _coordinator(self, event: Event) -> None:
        for action in self.rounds.handle(event, 0.0):
            match action:
                case Publish(topic=topic, payload=payload):
                    if parse_topic(topic).kind is TopicKind.MODEL:
                        self.to_agents.extend((a, ModelArrived(payload)) for a in self.cores)
                case Evaluate(round_no=r, weights=w):
                    self.to_coordinator.append(Evaluated(r, self.setup.evaluator.evaluate(w)))
                case RoundClosed(metrics=m):
                    self.closed.append(m)
                case Stop():
                    self.stopped = True

    def _agent(self, agent: str, event: AgentEvent) -> None:
        for out in self.cores[agent].handle(event):
            if isinstance(out, Publish):
                kind = parse_topic(out.topic).kind
                if kind is TopicKind.AGENTS:
                    self.to_coordinator.append(PresenceArrived(agent, out.payload))
                elif kind is TopicKind.UPDATE:
                    self.to_coordinator.append(UpdateArrived(agent, out.payload))
            elif isinstance(out, Train):
                started = time.perf_counter()
                model = out.model
                result = self.setup.trainers[agent].train(model.weights, model.plan, model.round)
                spent = time.perf_counter() - started
                self.train_s += spent
                self.to_agents.append((agent, TrainingDone(out.key, result, spent)))


def run_row(setup: _Setup, row: Row, config: RoundConfig) -> dict[str, Any]:
    """One run of ``row`` to its end; its per-round figures."""
    rounds = Rounds(config, dict(setup.weights), run="bench")
    loop = _Loopback(rounds, setup)
    began = time.perf_counter()
    loop.run()
    wall = time.perf_counter() - began
    closed = loop.closed
    accuracy = [m.accuracy for m in closed]
    return {
        "label": row.label,
        "server_opt": row.server_opt,
        "mu": row.mu,
        "sample_fraction": row.sample_fraction,
        "dp_noise": row.dp_noise,
        "dp_clip": row.dp_clip,
        "phase": rounds.phase.value,
        "message": rounds.message,
        "accuracy": accuracy,
        "final_accuracy": accuracy[-1] if accuracy else None,
        "best_accuracy": max((a for a in accuracy if a is not None), default=None),
        "epsilon": [m.epsilon for m in closed],
        "final_epsilon": closed[-1].epsilon if closed else None,
        "participants": [m.accepted for m in closed],
        "wall_s": round(wall, 2),
        "train_s": round(loop.train_s, 2),
    }


def run_strategies(opts: StrategiesOptions) -> dict[str, Any]:
    """Every row of ``opts`` on one shared setup.

    Raises:
        ValueError: for a row the coordinator would refuse, before anything runs.
    """
    planned = [(row, _config(opts, row)) for row in opts.all_rows()]
    setup = _Setup(opts)
    rows = [run_row(setup, row, config) for row, config in planned]
    options = {
        k: getattr(opts, k)
        for k in ("variant", "agents", "rounds", "task", "threads", "dp_clip", "dp_delta", "seed")
    }
    options["data_dir"] = str(opts.data_dir) if opts.data_dir else None
    return {"mode": "in-process (real Rounds and AgentCore, no broker)", "options": options,
            "rows": rows}


def report(doc: dict[str, Any]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| strategy | acc r1 | acc r5 | acc r10 | final acc | best acc | epsilon | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def acc(row: dict[str, Any], r: int) -> str:
        values = row["accuracy"]
        return f"{values[r - 1]:.4f}" if len(values) >= r and values[r - 1] is not None else "-"

    for row in doc["rows"]:
        eps = row["final_epsilon"]
        shown = "-" if row["dp_noise"] is None else ("inf" if eps is None else f"{eps:.3g}")
        final = row["final_accuracy"]
        best = row["best_accuracy"]
        lines.append(
            f"| {row['label']} | {acc(row, 1)} | {acc(row, 5)} | {acc(row, 10)} | "
            f"{'-' if final is None else f'{final:.4f}'} | {'-' if best is None else f'{best:.4f}'}"
            f" | {shown} | {row['wall_s']:.1f} |"
        )
    return "\n".join(lines)

