"""``fedmq bench scale``: the largest fleet whose rounds all complete within their deadline.

For each fleet size N (smallest first): a fresh private Mosquitto, the
coordinator in this process (``mnist-logreg`` by default: 784x10 weights, 31 KB
a model, 10,000/N training rows per agent), and N agents packed into P
``fedmq swarm`` processes, each agent with its own MQTT connection. A size
passes when every one of its rounds closes with all N updates accepted before
the round's deadline (``min_replies=N``, ``on_short_round=stop``).

Measured per size: seconds from spawning the swarms to round 1's announcement
(connect + presence of N agents); each round's seconds; CPU seconds and share
of one core, and peak RSS, of the broker, of this (coordinator) process and of
each swarm process. CPU is counted over the rounds only (round 1 announced to
the last round closed). The coordinator's peak RSS is reset per size
(``clear_refs``), so it is that size's peak on top of what earlier sizes left.
Swarm processes stay online after the run so their ``VmHWM`` can be read
before they are stopped (see :mod:`fedmq_tools.bench.measure`).
"""

from __future__ import annotations

import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator import Action, RoundClosed, RoundConfig, RoundOpened
from coordinator.config import SecAggPolicy
from fedmq.launch import Connection, build_coordinator
from fedmq.progress import human_bytes
from fedmq.tasks import DataConfig, get_task
from fedmq_tools.bench.fleet import FleetSpec, spawn
from fedmq_tools.bench.measure import (
    ExitWatcher,
    cpu_s,
    reset_peak_rss,
    stop_all,
    system_cpu_s,
    usage,
)
from fedmq_tools.brokers import PrivateBroker, broker_for
from protocol import ClosedBy, Phase, RoundMetrics
from transport.connection import BrokerURL


@dataclass(frozen=True, slots=True)
class ScaleOptions:
    """Which fleet sizes to try and how hard each round is pressed."""

    counts: tuple[int, ...] = (100, 250, 500, 1000)
    processes: int = 4
    rounds: int = 5
    deadline_s: float = 60.0
    task: str = "mnist-logreg"
    data_dir: Path | None = None
    #: give up on a size whose fleet is not online and through its rounds by then
    timeout_s: float = 900.0
    #: stop trying larger fleets after the first size that fails
    stop_on_failure: bool = True
    #: lines appended to the private broker's config (mosquitto.conf), e.g. a queue limit
    broker_config: str = ""
    #: the brokers every size runs on, side by side, each a private broker's kind
    #: (mosquitto, nats, rabbitmq; docs/BROKERS.md) or the URL of a running one; the
    #: first is the reference of ``round_s_ratio`` (``broker_config``: mosquitto only)
    brokers: tuple[str, ...] = ("mosquitto",)
    #: spread the agents over this many bridged site brokers with site aggregators (0: one
    #: broker, no sites; :mod:`fedmq_tools.bench.sites`)
    sites: int = 0
    #: run every round through SecAgg (``fedmq bench secagg`` compares with and without)
    secagg: SecAggPolicy | None = None


@dataclass
class _Window:
    """Observes the coordinator: CPU and time when round 1 opened and the last one closed."""

    broker_pid: int | None
    #: the swarm processes, once spawned
    swarm_pids: list[int] = field(default_factory=list)
    opened_at: float | None = None
    closed_at: float | None = None
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    rounds: list[RoundMetrics] = field(default_factory=list)

    def _sample(self) -> dict[str, float]:
        """CPU seconds so far: ours by role, and the whole machine's."""
        out = {"coordinator": usage().cpu_s, "swarms": cpu_s(list(self.swarm_pids))}
        if self.broker_pid is not None:
            out["broker"] = usage(self.broker_pid).cpu_s
        out["machine"] = system_cpu_s()
        return out

    def __call__(self, action: Action) -> None:
        if isinstance(action, RoundOpened) and action.round_no == 1 and action.attempt == 0:
            self.opened_at, self.start = time.monotonic(), self._sample()
        elif isinstance(action, RoundClosed):
            self.rounds.append(action.metrics)
            self.closed_at, self.end = time.monotonic(), self._sample()


def run_size(
    n: int, opts: ScaleOptions, logs: Path, broker: PrivateBroker | None = None,
    spec: str = "mosquitto",
) -> dict[str, Any]:
    """One fleet of ``n`` agents through ``opts.rounds`` rounds (on ``broker``, or a
    fresh one as ``spec`` says, whose CPU and RSS then belong to this size alone); its
    figures."""
    task = get_task(opts.task)
    job = f"scale-{n}" + ("-secagg" if opts.secagg is not None else "")
    with ExitStack() as stack:
        if broker is None:
            broker = stack.enter_context(broker_for(spec, mosquitto_config=opts.broker_config))
        window = _Window(broker.pid)
        config = RoundConfig(
            job=job,
            task=opts.task,
            rounds=opts.rounds,
            plan=task.plan,
            min_replies=n,
            deadline_s=opts.deadline_s,
            min_agents=n,
            on_short_round="stop",
            secagg=opts.secagg,
        )
        node = build_coordinator(
            config,
            Connection(BrokerURL.parse(broker.url)),
            data=DataConfig(data_dir=opts.data_dir),
            run_dir=None,
            on_action=window,
        )
        reset_peak_rss()
        fleet = FleetSpec(broker=broker.url, job=job, task=opts.task, count=n,
                          data_dir=opts.data_dir, exit_when_done=False)
        spawned = time.monotonic()
        procs = spawn(fleet, opts.processes, logs)
        window.swarm_pids = [p.pid for p in procs]
        failures: list[str] = []

        def on_exit(index: int, code: int) -> None:
            if not node.rounds.finished:
                said = _last_line(logs / f"swarm-{index}.log")
                failures.append(f"swarm process {index} exited with {code}: {said}")
                node.stop(failures[-1])

        watcher = ExitWatcher(procs, on_exit)
        timer = threading.Timer(opts.timeout_s, node.stop, args=("bench timeout",))
        timer.start()
        try:
            phase = node.run()
        finally:
            timer.cancel()
            coordinator_peak = usage().peak_rss
            broker_peak = usage(broker.pid).peak_rss if broker.pid else None
            watcher.close()
            stopped = stop_all(procs, timeout=60.0)
            broker_log = broker.log().strip().splitlines()
            broker_said = [line for line in broker_log if "dropped" in line] or broker_log[-1:]
    swarms = [u for u, _ in stopped if u is not None]
    rounds = window.rounds
    on_time = [m.closed_by in (ClosedBy.QUORUM, ClosedBy.ALL_REPLIED) for m in rounds]
    passed = phase is Phase.DONE and len(rounds) == opts.rounds and all(on_time)
    if not passed and not failures:
        failures.append(node.rounds.message or f"ended {phase.value}")
    if broker_said and not passed:  # e.g. QoS 1 messages beyond a client's max_queued_messages
        failures.append(f"broker log: {broker_said[-1]} ({len(broker_said)} such lines)")
    return {
        "agents": n,
        "processes": len(procs),
        "passed": passed,
        "failure": "; ".join(failures) or None,
        "startup_s": round(window.opened_at - spawned, 2) if window.opened_at else None,
        "round_s": [round(m.duration_s, 3) for m in rounds],
        "closed_by": [m.closed_by.value for m in rounds],
        "accepted": [m.accepted for m in rounds],
        "accuracy": [m.accuracy for m in rounds],
        "bytes_up_per_round": rounds[-1].bytes_up if rounds else None,
        "bytes_down_per_round": rounds[-1].bytes_down if rounds else None,
        "rounds_wall_s": _span(window),
        "cpu_s_during_rounds": _cpu(window),
        "foreign_cpu_s": _foreign(window),
        "peak_rss": {
            "broker": broker_peak,
            "coordinator": coordinator_peak,
            "swarm_process_max": max((s.peak_rss for s in swarms), default=None),
        },
        "swarm_cpu_s_total": round(sum(s.cpu_s for s in swarms), 2),
        "swarm_exit_codes": sorted({code for _, code in stopped}),
    }


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1] if lines else "(no output)"


def _span(window: _Window) -> float | None:
    if window.opened_at is None or window.closed_at is None:
        return None
    return round(window.closed_at - window.opened_at, 3)


def _cpu(window: _Window) -> dict[str, float]:
    return {
        name: round(window.end[name] - window.start[name], 2)
        for name in window.start
        if name in window.end and name != "machine"
    }


def _foreign(window: _Window) -> float | None:
    """CPU seconds the rest of the machine used during the rounds."""
    if not window.start or not window.end:
        return None
    machine = window.end["machine"] - window.start["machine"]
    return round(max(machine - sum(_cpu(window).values()), 0.0), 2)


def run_scale(opts: ScaleOptions) -> dict[str, Any]:
    """Every size in ``opts.counts``, smallest first, on each broker in turn; the largest
    that passed on every broker, and each broker's mean round time against the first's."""
    sizes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedmq-scale-") as tmp:
        for n in sorted(opts.counts):
            results = [_one_size(n, spec, opts, Path(tmp) / f"{n}-{i}")
                       for i, spec in enumerate(opts.brokers)]
            sizes.extend(results)
            if not all(r["passed"] for r in results) and opts.stop_on_failure:
                break
    passed = [n for n in opts.counts
              if [s["passed"] for s in sizes if s["agents"] == n] == [True] * len(opts.brokers)]
    return {
        "workload": {
            "task": opts.task,
            "processes": opts.processes,
            "rounds": opts.rounds,
            "deadline_s": opts.deadline_s,
            "sites": opts.sites,
            "brokers": list(opts.brokers),
        },
        "sizes": sizes,
        "round_s_ratio": round_ratios(sizes, opts.brokers),
        "largest_passing_fleet": max(passed) if passed else None,
    }


def _one_size(n: int, spec: str, opts: ScaleOptions, logs: Path) -> dict[str, Any]:
    logs.mkdir()
    if opts.sites:
        from fedmq_tools.bench.sites import run_sites_size, sites_line

        result = run_sites_size(n, opts.sites, opts, logs)
        line = sites_line(result)
    else:
        result = run_size(n, opts, logs, spec=spec)
        line = size_line(result)
    result["broker"] = spec
    print(f"{spec}: {line}", flush=True)
    return result


def round_ratios(sizes: list[dict[str, Any]], brokers: tuple[str, ...]) -> dict[str, Any]:
    """Per fleet size, each broker's mean round time over the first broker's (the reference,
    run in the same invocation); only sizes every broker passed."""
    ratios: dict[str, Any] = {}
    for n in sorted({s["agents"] for s in sizes}):
        means = {s["broker"]: sum(s["round_s"]) / len(s["round_s"])
                 for s in sizes if s["agents"] == n and s["passed"] and s["round_s"]}
        reference = means.get(brokers[0])
        if reference and len(means) == len(brokers):
            ratios[str(n)] = {b: round(means[b] / reference, 3) for b in brokers}
    return ratios


def size_line(s: dict[str, Any]) -> str:
    """One fleet size on one line."""
    verdict = "PASS" if s["passed"] else f"FAIL ({s['failure']})"
    rounds = " ".join(f"{x:.2f}" for x in s["round_s"]) or "-"
    cpu = s["cpu_s_during_rounds"]
    span = s["rounds_wall_s"] or 0.0
    share = "  ".join(
        f"{name} cpu {cpu[name]:.1f} s ({100 * cpu[name] / span:.0f}%)" for name in cpu if span
    )
    rss = s["peak_rss"]
    return (
        f"{s['agents']:>6} agents / {s['processes']} procs  {verdict}  online in "
        f"{s['startup_s']} s  rounds [{rounds}] s  {share}  peak RSS broker "
        f"{human_bytes(rss['broker'] or 0)}, coordinator {human_bytes(rss['coordinator'])}, "
        f"swarm process {human_bytes(rss['swarm_process_max'] or 0)}  foreign CPU "
        f"{s['foreign_cpu_s']} s"
    )
