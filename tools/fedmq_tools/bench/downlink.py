"""``fedmq bench downlink``: delta-coded models against whole models, in process.

The real round machine (:class:`coordinator.Rounds`) and one real agent core
(:class:`edge_agent.agent.AgentCore`) per agent, each training with
:class:`edge_agent.torch_trainer.TorchTrainer` as agents do, as ``fedmq bench
strategies`` runs them, with a loopback broker that keeps retained messages and
each agent's subscriptions (what the agent core asks for), so every payload a broker
would deliver to an agent is delivered and counted. Only MQTT's own framing and the
clock are left out (no deadline passes: every agent asked answers).

Rows, all from the same initial model, data split, seeds and uplink codec: the whole
model every round (the lossless downlink), then one per ``--downlink-delta`` spec.
Each reports test accuracy and payload bytes per round: up, down as the metrics count
it, and down as delivered (the two must agree), with their float32 baselines. Agents
``--late`` join after the first round, to show the whole-model fallback's cost.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
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
    RoundOpened,
    Rounds,
    Stop,
    UpdateArrived,
)
from edge_agent.agent import (
    AgentCore,
    AgentEvent,
    Connected,
    DeltaArrived,
    ModelArrived,
    Subscribe,
    Train,
    TrainingDone,
    Unsubscribe,
)
from edge_agent.torch_trainer import TorchEvaluator, TorchTrainer, initial_weights
from fedmq.tasks import DataConfig, agent_data, get_task, test_data
from protocol import Publish, RoundMetrics, TopicKind, parse_topic

JOB = "bench-downlink"

log = logging.getLogger("fedmq.bench.downlink")


@dataclass(frozen=True, slots=True)
class DownlinkOptions:
    """By default the CNN on 50 agents of a Dirichlet(0.3) split, int8+zstd updates."""

    task: str = "mnist-cnn"
    agents: int = 50
    partition: str = "dirichlet:0.3"
    rounds: int = 20
    codec: str = "int8+zstd"
    deltas: tuple[str, ...] = ("qsgd:2+zstd:9",)
    #: agents (the last ones) that come online only once round 2 opens
    late: int = 0
    data_dir: Path | None = None
    threads: int | None = 1
    seed: int = 0


class _Setup:
    """Data, trainers and evaluator, built once and shared by every row."""

    def __init__(self, opts: DownlinkOptions) -> None:
        task = get_task(opts.task)
        cfg = DataConfig(data_dir=opts.data_dir, seed=opts.seed)
        self.trainers = {
            f"agent-{k}": TorchTrainer(
                task.model, task.kind, *agent_data(task, cfg, k, opts.agents, opts.partition),
                index=k, threads=opts.threads,
            )
            for k in range(opts.agents)
        }
        self.evaluator = TorchEvaluator(task.model, task.kind, *test_data(task, cfg),
                                        threads=opts.threads)
        self.weights = initial_weights(task.model, opts.seed)
        self.plan = task.plan


def _matches(pattern: str, topic: str) -> bool:
    want, got = pattern.split("/"), topic.split("/")
    if want[-1] == "+":
        return len(want) == len(got) and want[:-1] == got[:-1]
    return want == got


class _Loopback:
    """A broker in a loop: retained messages, per-agent subscriptions, bytes per agent."""

    def __init__(self, rounds: Rounds, setup: _Setup, late: set[str]) -> None:
        self.rounds, self.setup, self.late = rounds, setup, late
        self.cores = {a: AgentCore(JOB, a, samples=t.samples, trainer=t.name)
                      for a, t in setup.trainers.items()}
        self.subscribed: dict[str, set[str]] = {a: set() for a in self.cores}
        self.retained: dict[str, bytes] = {}
        self.to_coordinator: deque[Event] = deque([BrokerConnected()])
        self.to_agents: deque[tuple[str, str, AgentEvent]] = deque()
        self.delivered = 0
        self.closed: list[tuple[RoundMetrics, int]] = []
        self.stopped = False
        for agent in self.cores:
            if agent not in late:
                self._connect(agent)

    def run(self) -> None:
        while (self.to_coordinator or self.to_agents) and not self.stopped:
            if self.to_coordinator:
                self._coordinator(self.to_coordinator.popleft())
            else:
                self._agent(*self.to_agents.popleft())

    def _connect(self, agent: str) -> None:
        self._subscribe(agent, tuple(t for t, _ in self.cores[agent].subscriptions))
        self.to_agents.appendleft((agent, "", Connected()))

    def _subscribe(self, agent: str, filters: tuple[str, ...]) -> None:
        self.subscribed[agent].update(filters)
        for topic, payload in self.retained.items():
            if any(_matches(f, topic) for f in filters):
                self._deliver(agent, topic, payload)

    def _deliver(self, agent: str, topic: str, payload: bytes) -> None:
        delta = parse_topic(topic).kind is TopicKind.DELTA
        event = DeltaArrived(payload) if delta else ModelArrived(payload)
        self.to_agents.append((agent, topic, event))

    def _coordinator(self, event: Event) -> None:
        for action in self.rounds.handle(event, 0.0):
            match action:
                case Publish(topic=topic, payload=payload, retain=retain):
                    if parse_topic(topic).kind not in (TopicKind.MODEL, TopicKind.DELTA):
                        continue
                    if retain:
                        self.retained[topic] = payload
                    for agent, filters in self.subscribed.items():
                        if any(_matches(f, topic) for f in filters):
                            self._deliver(agent, topic, payload)
                case RoundOpened(round_no=2, attempt=0):
                    for agent in self.late:
                        self._connect(agent)
                case Evaluate(round_no=r, weights=w):
                    self.to_coordinator.append(Evaluated(r, self.setup.evaluator.evaluate(w)))
                case RoundClosed(metrics=m):
                    self.closed.append((m, self.delivered))
                    log.info("%s round %d: accuracy %s, down %d bytes for %d agents",
                             self.rounds.config.downlink_delta or "whole", m.round, m.accuracy,
                             m.bytes_down, m.addressed or 0)
                case Stop():
                    self.stopped = True

    def _agent(self, agent: str, topic: str, event: AgentEvent) -> None:
        if isinstance(event, ModelArrived | DeltaArrived):
            self.delivered += len(event.payload)
        for out in self.cores[agent].handle(event):
            match out:
                case Publish(topic=t, payload=payload):
                    kind = parse_topic(t).kind
                    if kind is TopicKind.AGENTS:
                        self.to_coordinator.append(PresenceArrived(agent, payload))
                    elif kind is TopicKind.UPDATE:
                        self.to_coordinator.append(UpdateArrived(agent, payload))
                case Subscribe(topics=filters):
                    self._subscribe(agent, filters)
                case Unsubscribe(topics=filters):
                    self.subscribed[agent].difference_update(filters)
                case Train(key=key, model=model):
                    trainer = self.setup.trainers[agent]
                    result = trainer.train(model.weights, model.plan, model.round)
                    self.to_agents.append((agent, topic, TrainingDone(key, result, 0.0)))
                case _:
                    pass  # reports, and the model the device keeps (in memory here)


def run_row(setup: _Setup, opts: DownlinkOptions, delta: str | None) -> dict[str, Any]:
    """One run with ``delta`` (None: whole models) to its end; its per-round figures."""
    on_time = opts.agents - opts.late
    config = RoundConfig(job=JOB, task=opts.task, rounds=opts.rounds, plan=setup.plan,
                         codec=opts.codec, downlink_delta=delta, min_agents=on_time,
                         min_replies=on_time, on_short_round="stop")
    rounds = Rounds(config, dict(setup.weights), run="bench")
    late = {f"agent-{k}" for k in range(on_time, opts.agents)}
    loop = _Loopback(rounds, setup, late)
    began = time.perf_counter()
    loop.run()
    wall = time.perf_counter() - began
    rows, before = [], 0
    for m, delivered in loop.closed:
        raw_down = m.raw_bytes_down or 0
        rows.append({
            "round": m.round, "accuracy": m.accuracy, "accepted": m.accepted,
            "bytes_up": m.bytes_up, "raw_bytes_up": m.raw_bytes_up,
            "bytes_down": m.bytes_down, "delivered_down": delivered - before,
            "raw_bytes_down": raw_down, "addressed": m.addressed,
            "ratio_down": round(raw_down / m.bytes_down, 2),
            "ratio_both": round((m.raw_bytes_up + raw_down) / (m.bytes_up + m.bytes_down), 2),
        })
        before = delivered
    return {"downlink_delta": delta, "phase": rounds.phase.value, "message": rounds.message,
            "rounds": rows, "final_accuracy": rows[-1]["accuracy"] if rows else None,
            "wall_s": round(wall, 1)}


def run_downlink(opts: DownlinkOptions) -> dict[str, Any]:
    """The whole-model row, then one row per delta spec, on one shared setup."""
    setup = _Setup(opts)
    rows = [run_row(setup, opts, delta) for delta in (None, *opts.deltas)]
    options = {k: getattr(opts, k) for k in ("task", "agents", "partition", "rounds", "codec",
                                             "late", "threads", "seed")}
    options["deltas"] = list(opts.deltas)
    return {"mode": "in-process (real Rounds and AgentCore, loopback broker)",
            "options": options, "rows": rows}


def report(doc: dict[str, Any]) -> str:
    """One markdown line per row: accuracy, bytes down per agent and the ratios."""
    lines = [
        "| downlink | final acc | vs whole | down / agent / round (rounds 2+) | down ratio "
        "(rounds 2+) | both ways (rounds 2+) | down counted = delivered |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    whole = doc["rows"][0]["final_accuracy"]
    for row in doc["rows"]:
        later = row["rounds"][1:] or row["rounds"]
        down = sum(r["bytes_down"] for r in later)
        per_agent = down / max(sum(r["addressed"] for r in later), 1)
        ratio = sum(r["raw_bytes_down"] for r in later) / down
        both = sum(r["raw_bytes_up"] + r["raw_bytes_down"] for r in later) / sum(
            r["bytes_up"] + r["bytes_down"] for r in later)
        exact = all(r["bytes_down"] == r["delivered_down"] for r in row["rounds"])
        final = row["final_accuracy"]
        lines.append(
            f"| {row['downlink_delta'] or 'whole model (float32)'} | {final:.4f} | "
            f"{final - whole:+.4f} | {per_agent / 1000:,.1f} kB | {ratio:.1f}x | {both:.1f}x | "
            f"{'yes' if exact else 'NO'} |"
        )
    return "\n".join(lines)
