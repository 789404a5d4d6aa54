"""``python -m fedmq_tools.bench.byzantine``: hostile agents against each aggregator, real broker.

The coordinator and every agent run as threads of this process, each agent with
its own MQTT connection to a private Mosquitto (or ``--broker``), as ``fedmq
agents`` hosts them. The last ``--attackers`` agents are hostile: an honest torch
trainer wrapped by :class:`SignFlip`, which answers ``global - 10 * (local -
global)``. Such an update has the honest shapes, dtype and sample count and is
finite, so it passes every check the coordinator makes; only the aggregator can
blunt it.

Runs: FedAvg with no attacker (the clean baseline), then each ``--aggregator``
with the attackers. Every run starts from the same initial model and data; the
test accuracy of the global model is recorded after every round.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from coordinator import RoundConfig
from edge_agent.agent import AgentCore
from edge_agent.mqtt import AgentNode, run_fleet
from edge_agent.trainer import Trainer, TrainResult
from fedmq.broker import LocalBroker
from fedmq.launch import Connection, build_coordinator
from fedmq.tasks import DataConfig, agent_data, get_task
from protocol import Phase, TrainPlan, Weights
from transport.connection import BrokerURL, Session

DEFAULT_AGGREGATORS = ("fedavg", "median", "trimmed:0.2", "krum:4", "multikrum:4:12")


class SignFlip:
    """A hostile :class:`~edge_agent.trainer.Trainer`: trains honestly, then answers
    ``global + scale * (local - global)`` (``scale = -10``: the delta flipped, ten times over).
    """

    def __init__(self, inner: Trainer, scale: float = -10.0) -> None:
        self.inner = inner
        self.scale = scale
        self.name = inner.name  # announced like any honest agent
        self.samples = inner.samples

    def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult:
        honest = self.inner.train(weights, plan, round_no)
        hostile = {
            name: (w + self.scale * (honest.weights[name] - w)).astype(np.float32)
            for name, w in weights.items()
        }
        return TrainResult(hostile, honest.samples, honest.metrics)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        return self.inner.evaluate(weights)


@dataclass(frozen=True, slots=True)
class ByzantineOptions:
    task: str = "mnist-2nn"
    agents: int = 20
    attackers: int = 4
    rounds: int = 20
    aggregators: tuple[str, ...] = DEFAULT_AGGREGATORS
    scale: float = -10.0
    clip_norm: float | None = None
    data_dir: Path | None = None
    broker: str | None = None
    #: W1 rounds take about a second; a round with no update at all stops the run
    deadline_s: float = 30.0
    timeout_s: float = 1800.0


def honest_trainers(opts: ByzantineOptions) -> list[Trainer]:
    """One torch trainer per agent over its IID shard (built once, reused by every run)."""
    from edge_agent.torch_trainer import TorchTrainer

    task = get_task(opts.task)
    data = DataConfig(data_dir=opts.data_dir)
    return [
        TorchTrainer(task.model, task.kind, *agent_data(task, data, k, opts.agents), k, threads=1)
        for k in range(opts.agents)
    ]


def run_once(opts: ByzantineOptions, url: str, job: str, *, aggregator: str, attackers: int,
             trainers: Sequence[Trainer]) -> dict[str, Any]:
    """One training run: ``aggregator`` with the last ``attackers`` agents hostile.

    A run whose model the attack drives to overflow stops (phase ``failed``): every
    agent then declines, its local training gone to NaN, and the first round without
    an update ends the run with a message rather than retrying. That is an outcome to
    report, with the accuracy of the last round that closed.

    Raises:
        TimeoutError: if the run does not finish within ``opts.timeout_s``.
    """
    task = get_task(opts.task)
    config = RoundConfig(job=job, task=opts.task, rounds=opts.rounds, plan=task.plan,
                         aggregator=aggregator, clip_norm=opts.clip_norm,
                         deadline_s=opts.deadline_s, min_agents=opts.agents,
                         on_short_round="stop")
    broker = BrokerURL.parse(url)
    coordinator = build_coordinator(config, Connection(broker),
                                    data=DataConfig(data_dir=opts.data_dir), run_dir=None)
    nodes = []
    for k, honest in enumerate(trainers):
        trainer = SignFlip(honest, opts.scale) if k >= len(trainers) - attackers else honest
        core = AgentCore(job, f"agent-{k}", samples=trainer.samples, trainer=trainer.name)
        nodes.append(AgentNode(core, trainer, broker, Session(client_id=f"fedmq-{job}-agent-{k}")))
    phase: list[Phase] = []
    thread = threading.Thread(target=lambda: phase.append(coordinator.run()), daemon=True)
    started = time.monotonic()
    thread.start()
    agent_threads = run_fleet(nodes)
    thread.join(opts.timeout_s)
    if thread.is_alive():
        coordinator.stop("timeout")
        thread.join(30)
    for node in nodes:
        node.stop()
    for agent_thread in agent_threads:
        agent_thread.join(30)
    if not phase:
        raise TimeoutError(f"{job}: not finished after {opts.timeout_s} s")
    history = coordinator.rounds.history
    return {
        "aggregator": aggregator,
        "attackers": attackers,
        "phase": phase[0].value,
        "message": coordinator.rounds.message,
        "rounds_completed": len(history),
        "accuracy": [m.accuracy for m in history],
        "final_accuracy": history[-1].accuracy if history else None,
        "wall_s": round(time.monotonic() - started, 2),
    }


def run_byzantine(opts: ByzantineOptions) -> dict[str, Any]:
    """The clean baseline and each aggregator under attack; results in one document."""
    trainers = honest_trainers(opts)
    with contextlib.ExitStack() as stack:
        url = opts.broker or stack.enter_context(LocalBroker()).url
        runs = [run_once(opts, url, "byz-clean", aggregator="fedavg", attackers=0,
                         trainers=trainers)]
        for k, aggregator in enumerate(opts.aggregators):
            runs.append(run_once(opts, url, f"byz-{k}", aggregator=aggregator,
                                 attackers=opts.attackers, trainers=trainers))
    clean = runs[0]["final_accuracy"] or 0.0
    for run in runs:
        run["points_below_clean"] = round(100 * (clean - (run["final_accuracy"] or 0.0)), 2)
    return {
        "task": opts.task,
        "agents": opts.agents,
        "attackers": opts.attackers,
        "rounds": opts.rounds,
        "scale": opts.scale,
        "clip_norm": opts.clip_norm,
        "placement": "coordinator and agents as threads of one process, over Mosquitto",
        "runs": runs,
    }


def report(doc: dict[str, Any]) -> str:
    """The runs as a markdown table."""
    lines = [
        f"{doc['task']}, {doc['agents']} agents of which {doc['attackers']} hostile "
        f"(delta x {doc['scale']:g}), {doc['rounds']} rounds",
        "",
        "| aggregator | hostile agents | rounds | final accuracy | vs clean (points) | wall s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for run in doc["runs"]:
        final = run["final_accuracy"]
        ended = "" if run["phase"] == "done" else f" (stopped: {run['message']})"
        lines.append(
            f"| {run['aggregator']} | {run['attackers']} | {run['rounds_completed']}{ended} | "
            f"{final if final is None else f'{final:.4f}'} | "
            f"{-run['points_below_clean']:+.2f} | {run['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fedmq_tools.bench.results import RESULTS_DIR, begin, write_results

    defaults = ByzantineOptions()
    parser = argparse.ArgumentParser(prog="python -m fedmq_tools.bench.byzantine",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=defaults.task)
    parser.add_argument("--agents", type=int, default=defaults.agents)
    parser.add_argument("--attackers", type=int, default=defaults.attackers)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--aggregator", action="append",
                        help=f"repeatable (default: {', '.join(DEFAULT_AGGREGATORS)})")
    parser.add_argument("--scale", type=float, default=defaults.scale,
                        help="hostile update = global + SCALE * (local - global)")
    parser.add_argument("--clip-norm", type=float, help="server-side clipping in every run")
    parser.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    parser.add_argument("--broker", help="use this broker instead of a private Mosquitto")
    parser.add_argument("--deadline", type=float, default=defaults.deadline_s)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "byzantine.json")
    args = parser.parse_args(argv)
    # as typed: results.command_line() would name the fedmq console script
    command = shlex.join(["python", "-m", "fedmq_tools.bench.byzantine",
                          *(sys.argv[1:] if argv is None else argv)])
    opts = replace(defaults, task=args.task, agents=args.agents, attackers=args.attackers,
                   rounds=args.rounds, aggregators=tuple(args.aggregator or DEFAULT_AGGREGATORS),
                   scale=args.scale, clip_norm=args.clip_norm, data_dir=args.data,
                   broker=args.broker, deadline_s=args.deadline)
    begun = begin()
    doc = run_byzantine(opts)
    print(report(doc))
    print(f"results: {write_results(args.out, 'byzantine', begun, {**doc, 'command': command})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
