"""An uneven fleet: synchronous FedAvg (plain, and straggler-aware) against FedBuff.

Every configuration runs over one private Mosquitto, one after the other in one
invocation, with the same fleet: in-process :class:`edge_agent.mqtt.AgentNode`
threads, each on its own connection, the code devices run (numpy trainer). The
unevenness is the experiment (:mod:`fedmq.fleet_schedule`): agent i is of speed class
``speeds[i % 3]`` (1x, 3x, 10x), made slow by an artificial delay of
``(class - 1) * base_delay_s`` after each training, and a seeded ``offline_fraction``
of the agents go offline and come back at random (exponential on/off periods; the
same schedule in every run). Nothing else differs between agents.

Configurations: synchronous FedAvg with quorum = every agent online when the round
opens; quorum = ``quorum_fraction`` of the fleet with over-selection, without and
with ``--carry-late``; FedBuff for each K. Each run lasts ``budget_s`` wall-clock
seconds from its first model announcement (every agent is online by then: the run
waits for all of them). Reported per run: time to the first evaluated model at or
above the target, accuracy of the last model evaluated within the budget, server
steps, updates accepted, carried and rejected, wasted = rejected ``stale`` / (accepted +
carried + rejected) (updates that reached the coordinator and were thrown away for
arriving too late), the same fraction for every rejection (``duplicate`` ones come from
agents coming back online: the harness builds them anew, with no memory of what they
answered, as a device rebooting without state), trainings declined (an agent going
offline mid-training declines it), bytes.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coordinator import Action, RoundClosed, RoundConfig, RoundOpened, UpdateAccepted
from coordinator.staleness import BufferConfig
from edge_agent.mqtt import AgentNode
from fedmq.broker import LocalBroker
from fedmq.fleet_driver import ScheduledFleet
from fedmq.fleet_schedule import FleetSchedule, FleetSpec
from fedmq.launch import AgentSettings, Connection, build_agent, build_coordinator
from fedmq.progress import wasted
from fedmq.tasks import DataConfig, get_task
from transport.connection import BrokerURL


@dataclass(frozen=True, slots=True)
class HeteroOptions:
    agents: int = 20
    task: str = "mnist-2nn"
    data_dir: Path | None = None
    target: float = 0.85
    speeds: tuple[float, ...] = (1.0, 3.0, 10.0)
    base_delay_s: float = 0.2
    offline_fraction: float = 0.2
    on_s: float = 8.0
    off_s: float = 4.0
    fleet_seed: int = 0
    #: each run's wall-clock budget from its first announcement
    budget_s: float = 40.0
    quorum_fraction: float = 0.8
    over_select: float = 1.3
    carry_late: int = 2
    buffer_ks: tuple[int, ...] = (5, 10, 15)
    max_staleness: int = 50
    #: synchronous rounds close by then with what came (an agent may be offline)
    deadline_s: float = 10.0

    @property
    def fleet(self) -> FleetSpec:
        return FleetSpec(speeds=self.speeds, base_delay_s=self.base_delay_s,
                         offline_fraction=self.offline_fraction, on_s=self.on_s,
                         off_s=self.off_s, seed=self.fleet_seed)


#: the fleet shares one process: each BLAS call on one thread, as on a small device
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def one_blas_thread() -> None:
    """Re-run this command with one BLAS thread per call unless it already has that.

    Why: twenty agents training at once in one process, each BLAS call spawning its own
    busy-waiting threads on a 2-core machine, stalled every training for seconds (measured:
    a synchronous round of 10 s that takes 2.1 s on one thread). The environment must
    be set before numpy loads, hence a fresh process.
    """
    if all(os.environ.get(k) == v for k, v in ONE_THREAD_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, "-m", "fedmq", *sys.argv[1:]],
              {**os.environ, **ONE_THREAD_ENV})


def configurations(opts: HeteroOptions) -> list[tuple[str, dict[str, Any], BufferConfig | None]]:
    """(name, RoundConfig overrides, FedBuff settings or None) of every run, in order."""
    quorum = math.ceil(opts.quorum_fraction * opts.agents)
    over = {"quorum": quorum, "over_select": opts.over_select}
    pct = round(100 * opts.quorum_fraction)
    runs: list[tuple[str, dict[str, Any], BufferConfig | None]] = [
        ("sync_all", {}, None),
        (f"sync_q{pct}_over", over, None),
        (f"sync_q{pct}_over_carry", {**over, "carry_late": opts.carry_late}, None),
    ]
    runs += [(f"fedbuff_k{k}", {}, BufferConfig(k=k, max_staleness=opts.max_staleness))
             for k in opts.buffer_ks]
    return runs


def _run(opts: HeteroOptions, url: str, name: str, overrides: dict[str, Any],
         buffer: BufferConfig | None) -> dict[str, Any]:
    """One configuration for ``budget_s`` seconds; what it reached and what it cost."""
    job = f"hetero-{name.replace('_', '-')}"
    config = RoundConfig(job=job, task=opts.task, rounds=100_000, plan=get_task(opts.task).plan,
                         deadline_s=opts.deadline_s, min_agents=opts.agents, **overrides)
    data = DataConfig(data_dir=opts.data_dir)
    closed: list[tuple[float, int, float | None]] = []
    started: list[float] = []
    accepted = [0]
    budget: list[threading.Timer] = []  # started with the first announcement

    def observe(action: Action) -> None:
        if isinstance(action, RoundOpened) and not started:
            started.append(time.monotonic())
            budget[0].start()
        elif isinstance(action, UpdateAccepted):
            accepted[0] += 1
        elif isinstance(action, RoundClosed):
            closed.append((time.monotonic() - started[0], action.metrics.round,
                           action.metrics.accuracy))

    def agent(i: int, delay_s: float) -> AgentNode:
        return build_agent(AgentSettings(job=job, task=opts.task, agent_id=f"agent-{i}", shard=i,
                                         num_shards=opts.agents, data=data, threads=1,
                                         trainer="numpy", train_delay_s=delay_s), conn)

    conn = Connection(BrokerURL.parse(url))
    node = build_coordinator(config, conn, data=data, run_dir=None, buffer=buffer,
                             on_action=observe)
    budget.append(threading.Timer(opts.budget_s, node.stop, args=("budget spent",)))
    fleet = ScheduledFleet(FleetSchedule(opts.fleet, opts.agents), agent)
    fleet.start()
    try:
        phase = node.run()
    finally:
        budget[0].cancel()
        fleet.stop()
        fleet.join(10)
    return _summary(opts, node.rounds, closed, accepted=accepted[0],
                    changes=len(fleet.changes), phase=phase.value)


def _summary(opts: HeteroOptions, rounds: Any, closed: list[tuple[float, int, float | None]],
             *, accepted: int, changes: int, phase: str) -> dict[str, Any]:
    hit = next(((t, r) for t, r, a in closed if a is not None and a >= opts.target), None)
    within = [a for t, _, a in closed if t <= opts.budget_s and a is not None]
    history = rounds.history
    carried = getattr(rounds, "carried_total", 0)
    rejected = dict(rounds.rejected_total)
    arrived = accepted + carried + sum(rejected.values())
    return {
        "phase": phase,
        "time_to_target_s": round(hit[0], 3) if hit else None,
        "steps_to_target": hit[1] if hit else None,
        "accuracy_at_budget": within[-1] if within else None,
        "best_accuracy": max(within) if within else None,
        "steps": len(history),
        "updates_accepted": accepted,
        "updates_carried": carried,
        "updates_rejected": rejected,
        # thrown away for arriving too late (the waste), and for any reason
        "wasted_fraction": round(wasted(rejected) / max(arrived, 1), 4),
        "rejected_fraction": round(sum(rejected.values()) / max(arrived, 1), 4),
        "declined": sum(m.declined for m in history),
        "bytes_up": sum(m.bytes_up for m in history),
        "bytes_down": sum(m.bytes_down for m in history),
        "availability_changes": changes,
    }


def run_hetero(opts: HeteroOptions) -> dict[str, Any]:
    """Every configuration over one private broker, then the issue's three criteria."""
    runs: dict[str, dict[str, Any]] = {}
    with LocalBroker() as broker:
        for name, overrides, buffer in configurations(opts):
            runs[name] = _run(opts, broker.url, name, overrides, buffer)
    return {"options": {**asdict(opts), "data_dir": str(opts.data_dir)},
            "delays_s": [FleetSchedule(opts.fleet, opts.agents).delay_s(i)
                         for i in range(opts.agents)],
            "flaky_agents": sorted(FleetSchedule(opts.fleet, opts.agents).flaky),
            "runs": runs, **verdict(runs)}


def _best(runs: dict[str, dict[str, Any]], prefix: str) -> tuple[str | None, dict[str, Any]]:
    """The run of ``prefix`` that reached the target first (or, none did, the first)."""
    mine = {n: r for n, r in runs.items() if n.startswith(prefix)}
    hit = {n: r for n, r in mine.items() if r["time_to_target_s"] is not None}
    if not hit:
        return None, {}
    name = min(hit, key=lambda n: hit[n]["time_to_target_s"])
    return name, hit[name]


def verdict(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's done-when against the best synchronous and the best FedBuff run."""
    sync_name, sync = _best(runs, "sync")
    buff_name, buff = _best(runs, "fedbuff")
    s, f = sync.get("time_to_target_s"), buff.get("time_to_target_s")
    ratio = round(s / f, 3) if s and f else None
    sync_acc, buff_acc = sync.get("accuracy_at_budget"), buff.get("accuracy_at_budget")
    wasted = buff.get("wasted_fraction")
    return {
        "best_sync": sync_name, "best_fedbuff": buff_name,
        "sync_time_to_target_s": s, "fedbuff_time_to_target_s": f, "ratio": ratio,
        "criteria": {
            "ratio_at_least_2": ratio is not None and ratio >= 2,
            "accuracy_at_budget_within_1_point": sync_acc is not None and buff_acc is not None
            and buff_acc >= sync_acc - 0.01,
            "wasted_below_5_percent": wasted is not None and wasted < 0.05,
        },
    }


def report(doc: dict[str, Any]) -> str:
    o = doc["options"]
    lines = [f"hetero: {o['agents']} agents, task {o['task']}, target {o['target']}, "
             f"classes {o['speeds']} x base delay {o['base_delay_s']} s, "
             f"{len(doc['flaky_agents'])} flaky, budget {o['budget_s']} s"]
    for name, r in doc["runs"].items():
        lines.append(f"  {name:22s} to target {r['time_to_target_s']} s "
                     f"({r['steps_to_target']} steps), at budget {r['accuracy_at_budget']}, "
                     f"wasted {r['wasted_fraction']}, carried {r['updates_carried']}, "
                     f"up {r['bytes_up']} B, down {r['bytes_down']} B")
    lines.append(f"  best sync {doc['best_sync']} / best fedbuff {doc['best_fedbuff']}: "
                 f"ratio {doc['ratio']}; criteria {doc['criteria']}")
    return "\n".join(lines)

