"""An uneven fleet: time to a target accuracy, synchronous FedAvg against FedBuff.

Both runs go over one private Mosquitto, one after the other in one invocation,
with the same agents: in-process :class:`edge_agent.mqtt.AgentNode` threads, each
on its own connection, the code devices run. The unevenness is the experiment:
agent i is of speed class ``SPEED_CLASSES[i % 3]`` (1x, 3x, 10x), made slow by an
artificial delay of ``(class - 1) * base_delay_s`` after each training
(``AgentSettings.train_delay_s``); nothing else differs between agents.

Synchronous FedAvg waits for every agent (quorum = all) each round; FedBuff
applies the server step after every K updates. Time to target is wall-clock
seconds from the first model announcement (every agent is online by then: the
run waits for all of them) to the first evaluated model at or above the target.
Not measured here (issue 18, still open): on/off availability, over-selection, the
W1 MNIST-sized fleet.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from coordinator import Action, RoundClosed, RoundConfig, RoundOpened
from coordinator.staleness import BufferConfig
from edge_agent.mqtt import run_fleet
from fedmq.broker import LocalBroker
from fedmq.launch import AgentSettings, Connection, build_agent, build_coordinator
from fedmq.tasks import DataConfig, get_task
from transport.connection import BrokerURL

#: each agent's slowdown over the fastest: agent i is of class SPEED_CLASSES[i % 3]
SPEED_CLASSES = (1, 3, 10)


@dataclass(frozen=True, slots=True)
class HeteroOptions:
    agents: int = 9
    task: str = "digits"
    target: float = 0.85
    base_delay_s: float = 0.2
    buffer_k: int = 3
    max_staleness: int = 5
    max_rounds: int = 200
    timeout_s: float = 600.0


def delays(opts: HeteroOptions) -> list[float]:
    """The artificial delay of each agent: ``(class - 1) * base_delay_s``."""
    return [(SPEED_CLASSES[i % 3] - 1) * opts.base_delay_s for i in range(opts.agents)]


def _run(opts: HeteroOptions, url: str, job: str, buffer: BufferConfig | None) -> dict[str, Any]:
    """One run to the target; its time to target, rounds (or versions) and accuracy."""
    config = RoundConfig(job=job, task=opts.task, rounds=opts.max_rounds,
                         plan=get_task(opts.task).plan, deadline_s=opts.timeout_s,
                         min_agents=opts.agents, target_accuracy=opts.target)
    closed: list[tuple[float, int, float | None]] = []
    started: list[float] = []  # the first announcement: every agent is online by then

    def observe(action: Action) -> None:
        if isinstance(action, RoundOpened) and not started:
            started.append(time.monotonic())
        if isinstance(action, RoundClosed):
            closed.append((time.monotonic() - started[0], action.metrics.round,
                           action.metrics.accuracy))

    conn = Connection(BrokerURL.parse(url))
    node = build_coordinator(config, conn, data=DataConfig(), run_dir=None, on_action=observe,
                             buffer=buffer)
    agents = [
        build_agent(AgentSettings(job=job, task=opts.task, agent_id=f"agent-{i}", shard=i,
                                  num_shards=opts.agents, threads=1, trainer="numpy",
                                  train_delay_s=delay), conn)
        for i, delay in enumerate(delays(opts))
    ]
    threads = run_fleet(agents)
    timer = threading.Timer(opts.timeout_s, node.stop, args=("bench timeout",))
    timer.start()
    try:
        phase = node.run()
    finally:
        timer.cancel()
        for agent in agents:
            agent.stop()
        for thread in threads:
            thread.join(10)
    hit = next(((t, r, a) for t, r, a in closed if a is not None and a >= opts.target), None)
    return {
        "phase": phase.value,
        "time_to_target_s": round(hit[0], 3) if hit else None,
        "rounds_to_target": hit[1] if hit else None,
        "final_accuracy": closed[-1][2] if closed else None,
        "rejected": node.rounds.rejected_total,
    }


def run_hetero(opts: HeteroOptions) -> dict[str, Any]:
    """Synchronous FedAvg, then FedBuff, over one private broker."""
    buffer = BufferConfig(k=opts.buffer_k, max_staleness=opts.max_staleness)
    with LocalBroker() as broker:
        sync = _run(opts, broker.url, "hetero-sync", None)
        fedbuff = _run(opts, broker.url, "hetero-fedbuff", buffer)
    s, f = sync["time_to_target_s"], fedbuff["time_to_target_s"]
    return {
        "options": asdict(opts),
        "speed_classes": list(SPEED_CLASSES),
        "delays_s": delays(opts),
        "sync": sync,
        "fedbuff": fedbuff,
        "sync_time_to_target_s": s,
        "fedbuff_time_to_target_s": f,
        "ratio": round(s / f, 3) if s and f else None,
    }


def report(doc: dict[str, Any]) -> str:
    o = doc["options"]
    lines = [f"hetero: {o['agents']} agents, task {o['task']}, target {o['target']}, "
             f"classes {doc['speed_classes']} x base delay {o['base_delay_s']} s"]
    for name in ("sync", "fedbuff"):
        r = doc[name]
        lines.append(f"  {name:8s} time to target {r['time_to_target_s']} s in "
                     f"{r['rounds_to_target']} steps, final accuracy {r['final_accuracy']}")
    lines.append(f"  ratio sync/fedbuff: {doc['ratio']}")
    return "\n".join(lines)
