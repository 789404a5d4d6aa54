"""``fedmq bench secagg``: what secure aggregation costs per round, against plain FedAvg.

For each fleet size N: the same fleet (N simulated agents, numpy trainer, packed
into P ``fedmq swarm`` processes; see :mod:`fedmq_tools.bench.scale`) runs R rounds
of plain FedAvg and R rounds under ``--secagg`` (optionally SecAgg+ with
``--degree``), alternately, each on a fresh private Mosquitto. Every agent answers
every round. Compared: payload bytes up and down per round (what the coordinator
counts in its metrics: every SecAgg message, every model, fan-out included) and
the median round's seconds. A SecAgg round does four exchanges where FedAvg does
one, and every agent expands one mask per neighbour, so time grows with N x degree.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coordinator.config import SecAggPolicy
from fedmq.progress import human_bytes
from fedmq_tools.bench.scale import ScaleOptions, run_size


@dataclass(frozen=True, slots=True)
class SecAggBenchOptions:
    counts: tuple[int, ...] = (20, 200)
    processes: int = 4
    rounds: int = 3
    deadline_s: float = 600.0
    task: str = "mnist-logreg"
    data_dir: Path | None = None
    #: SecAgg+ degree (None: the complete graph)
    degree: int | None = None
    timeout_s: float = 1800.0


def run_secagg_bench(opts: SecAggBenchOptions) -> dict[str, Any]:
    """Plain and SecAgg runs for every size; their figures and ratios."""
    policy = SecAggPolicy(degree=opts.degree, keys_s=opts.deadline_s, shares_s=opts.deadline_s,
                          unmask_s=opts.deadline_s)
    base = ScaleOptions(processes=opts.processes, rounds=opts.rounds, deadline_s=opts.deadline_s,
                        task=opts.task, data_dir=opts.data_dir, timeout_s=opts.timeout_s)
    sizes = []
    with tempfile.TemporaryDirectory(prefix="fedmq-secagg-") as tmp:
        for n in sorted(opts.counts):
            runs = {}
            for name, secagg in (("plain", None), ("secagg", policy)):
                logs = Path(tmp) / f"{n}-{name}"
                logs.mkdir()
                runs[name] = run_size(n, replace(base, secagg=secagg), logs)
                if not runs[name]["passed"]:
                    raise RuntimeError(f"{name} run of {n} agents failed: {runs[name]['failure']}")
            sizes.append(_compare(n, runs["plain"], runs["secagg"]))
            print(size_line(sizes[-1]), flush=True)
    return {
        "workload": {"task": opts.task, "processes": opts.processes, "rounds": opts.rounds,
                     "degree": opts.degree or "complete"},
        "sizes": sizes,
    }


def _compare(n: int, plain: dict[str, Any], secure: dict[str, Any]) -> dict[str, Any]:
    def per_round(run: dict[str, Any]) -> dict[str, Any]:
        return {
            "median_round_s": round(statistics.median(run["round_s"]), 3),
            "round_s": run["round_s"],
            "bytes_up": run["bytes_up_per_round"],
            "bytes_down": run["bytes_down_per_round"],
            "accuracy": run["accuracy"][-1],
            "cpu_s_during_rounds": run["cpu_s_during_rounds"],
            "foreign_cpu_s": run["foreign_cpu_s"],
        }

    p, s = per_round(plain), per_round(secure)
    return {
        "agents": n,
        "plain": p,
        "secagg": s,
        "bytes_up_ratio": round(s["bytes_up"] / p["bytes_up"], 3),
        "bytes_down_ratio": round(s["bytes_down"] / p["bytes_down"], 3),
        "bytes_total_ratio": round((s["bytes_up"] + s["bytes_down"])
                                   / (p["bytes_up"] + p["bytes_down"]), 3),
        "time_ratio": round(s["median_round_s"] / p["median_round_s"], 2),
    }


def size_line(c: dict[str, Any]) -> str:
    p, s = c["plain"], c["secagg"]
    return (
        f"{c['agents']:>5} agents  up {human_bytes(p['bytes_up'])} -> "
        f"{human_bytes(s['bytes_up'])} (x{c['bytes_up_ratio']})  down "
        f"{human_bytes(p['bytes_down'])} -> {human_bytes(s['bytes_down'])} "
        f"(x{c['bytes_down_ratio']})  round {p['median_round_s']} s -> "
        f"{s['median_round_s']} s (x{c['time_ratio']})  acc {p['accuracy']} / {s['accuracy']}"
    )
