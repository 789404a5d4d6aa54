"""``fedmq bench w1``: Workload W1 through fedmq over a real Mosquitto, checked against
the in-process reference.

What runs (DESIGN.md, "Workload W1"): a private Mosquitto (or ``--broker``); the
coordinator in this process, evaluating every round on the 5,000 held-out
images; one OS process per agent (``python -m fedmq agent ... --threads 1`` with
``OMP_NUM_THREADS=1``). Then, in this process, the same workload in plain torch
(:func:`fedmq_tools.reference.run_reference`, with the same codec's round trip) and
the centralised baseline (:func:`fedmq_tools.reference.run_centralised`).

What is measured, and how:
- total wall: from round 1's ``RoundOpened`` to the last round's ``RoundClosed``
  (seen through the coordinator's ``on_action``), so agent start-up and data
  loading are excluded, as the reference excludes them;
- per round: test accuracy and loss, ``RoundMetrics.duration_s``, payload bytes
  up and down (and raw float32 bytes up), and the peak RSS so far (``VmHWM``) of
  the coordinator's process and of agent-0, read as the round closes;
- peak RSS: the coordinator's is this process's ``VmHWM`` read when the fedmq
  run ends (before the reference runs here); each agent's is its ``VmHWM`` read
  after the run, before it is stopped; the broker's is its ``VmHWM`` before it is stopped.
- agreement: the largest per-round |accuracy(fedmq) - accuracy(reference)|.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator import Action, Event, RoundClosed, RoundConfig, RoundOpened, SecAggArrived
from coordinator.config import SecAggPolicy
from coordinator.mqtt import CoordinatorNode
from fedmq.broker import LocalBroker
from fedmq.launch import Connection, build_coordinator
from fedmq.progress import human_bytes
from fedmq.tasks import DataConfig, get_task
from fedmq_tools.bench.measure import ExitWatcher, cpu_s, stop_all, system_cpu_s, usage
from protocol import Phase, RoundMetrics
from protocol.peek import peek_fields
from transport.connection import BrokerURL

#: W1's variants and the partition each names (DESIGN.md)
VARIANTS = {"iid": "iid", "noniid": "shards"}
#: the goals issue 3 set: accuracy within 0.3 points, wall within 1.1x the reference
ACCURACY_TOLERANCE = 0.003
WALL_RATIO_GOAL = 1.1
#: every agent process trains on one thread, whatever library does the maths
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass(frozen=True, slots=True)
class W1Options:
    """One W1 run; the defaults are DESIGN.md's workload."""

    variant: str = "iid"
    codec: str = "none"
    #: the codec of delta-coded models (docs/PROTOCOL.md §15); None: whole models
    downlink_delta: str | None = None
    #: the broadcast model's dtype: fp32, or fp16 (the whole model travels as float16)
    downlink: str = "fp32"
    task: str = "mnist-2nn"
    agents: int = 20
    rounds: int = 20
    data_dir: Path | None = None
    broker: str | None = None
    deadline_s: float = 120.0
    timeout_s: float = 1800.0
    reference: bool = True
    centralised: bool = True
    ref_threads: int | None = None
    #: fedmq runs and reference runs, alternated; the wall ratio compares their medians
    repeat: int = 1
    #: run every round through SecAgg (docs/SECURITY.md)
    secagg: SecAggPolicy | None = None
    #: SecAgg: in every other round this fraction of the agents drops after masking
    #: (their unmask answers are lost), so the sum must be recovered from the others
    drop_after_mask: float = 0.0


@dataclass
class _Clock:
    """Observes the coordinator: when round 1 was announced, when each round closed, and
    the machine's and our processes' CPU seconds at those moments."""

    pids: list[int | str] = field(default_factory=lambda: ["self"])
    #: whose peak RSS each round's row also records, besides this process's
    agent_pid: int | None = None
    first_opened: float | None = None
    closed: list[tuple[float, RoundMetrics]] = field(default_factory=list)
    #: per closed round: peak RSS so far of this process and of ``agent_pid``
    peak_rss: list[tuple[int, int | None]] = field(default_factory=list)
    cpu_at_open: tuple[float, float] = (0.0, 0.0)
    cpu_at_close: tuple[float, float] = (0.0, 0.0)

    def __call__(self, action: Action) -> None:
        if isinstance(action, RoundOpened) and action.round_no == 1 and action.attempt == 0:
            self.first_opened = time.monotonic()
            self.cpu_at_open = (system_cpu_s(), cpu_s(self.pids))
        elif isinstance(action, RoundClosed):
            self.closed.append((time.monotonic(), action.metrics))
            self.cpu_at_close = (system_cpu_s(), cpu_s(self.pids))
            # VmHWM can read lower later (see measure.py): keep the largest value seen
            seen_c, seen_a = self.peak_rss[-1] if self.peak_rss else (0, None)
            agent = usage(self.agent_pid).peak_rss if self.agent_pid else None
            self.peak_rss.append(
                (max(usage().peak_rss, seen_c), max(agent or 0, seen_a or 0) or None)
            )

    def peak(self, final: int, which: int) -> int:
        """The larger of a final ``VmHWM`` read and the last per-round one (0 or 1)."""
        seen = self.peak_rss[-1][which] if self.peak_rss else None
        return max(final, seen or 0)

    def foreign_cpu_s(self) -> float:
        """CPU seconds used between round 1 and the last close by processes not ours."""
        machine = self.cpu_at_close[0] - self.cpu_at_open[0]
        ours = self.cpu_at_close[1] - self.cpu_at_open[1]
        return round(max(machine - ours, 0.0), 2)


def job_name(opts: W1Options) -> str:
    """A valid job id naming the variant and codecs (codec specs may hold ``:``)."""
    codec = "secagg" if opts.secagg is not None else opts.codec
    down = f"-down-{opts.downlink_delta}" if opts.downlink_delta else ""
    down += "-fp16" if opts.downlink == "fp16" else ""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"w1-{opts.variant}-{codec}{down}")[:64]


def lose_unmask_answers(node: CoordinatorNode, agents: int, fraction: float) -> None:
    """In even rounds, the unmask answers of the first ``fraction`` of the agents never
    reach the coordinator: to SecAgg they dropped out after masking, and their inputs
    must be unmasked from the other agents' shares (the fault is in the network, so
    the agents themselves go on to the next round)."""
    lost = {f"agent-{k}" for k in range(round(fraction * agents))}
    handle = node.rounds.handle

    def lossy(event: Event, now: float) -> list[Action]:
        if isinstance(event, SecAggArrived) and event.agent in lost:
            head = peek_fields(event.payload, ("type", "round"))
            if head.get("type") == "secagg_unmask" and head.get("round", 1) % 2 == 0:
                return []
        return handle(event, now)

    node.rounds.handle = lossy  # type: ignore[method-assign]


def agent_command(opts: W1Options, url: str, job: str, k: int) -> list[str]:
    """The command line of agent ``k``: W1's shard k of n, one torch thread.

    Agents stay online after the run, so the bench can read their peak RSS
    before it stops them (see :mod:`fedmq_tools.bench.measure`).
    """
    cmd = [
        sys.executable, "-m", "fedmq", "agent",
        "--broker", url, "--job", job, "--task", opts.task,
        "--shard", f"{k}/{opts.agents}", "--agent-id", f"agent-{k}",
        "--partition", VARIANTS[opts.variant], "--threads", "1",
    ]
    if opts.data_dir is not None:
        cmd += ["--data", str(opts.data_dir)]
    return cmd


def _round_config(opts: W1Options, job: str) -> RoundConfig:
    task = get_task(opts.task)
    return RoundConfig(
        job=job,
        task=opts.task,
        rounds=opts.rounds,
        plan=task.plan,
        codec=opts.codec,
        downlink_delta=opts.downlink_delta,
        downlink="fp16" if opts.downlink == "fp16" else "fp32",
        min_replies=opts.agents,  # every agent every round, as W1 says
        deadline_s=opts.deadline_s,
        min_agents=opts.agents,
        on_short_round="stop",
        secagg=opts.secagg,
    )


def run_fedmq(opts: W1Options, logs: Path) -> dict[str, Any]:
    """W1 through fedmq: coordinator here, agents as processes, over a real broker."""
    job = job_name(opts)
    with ExitStack() as stack:
        broker = None if opts.broker else stack.enter_context(LocalBroker())
        url = opts.broker or (broker.url if broker else "")
        clock = _Clock()
        node = build_coordinator(
            _round_config(opts, job),
            Connection(BrokerURL.parse(url)),
            data=DataConfig(data_dir=opts.data_dir),
            run_dir=logs / "coordinator",
            on_action=clock,
        )
        if opts.drop_after_mask:
            lose_unmask_answers(node, opts.agents, opts.drop_after_mask)
        env = {**os.environ, **ONE_THREAD_ENV}
        procs = []
        for k in range(opts.agents):
            log = stack.enter_context((logs / f"agent-{k}.log").open("wb"))
            cmd = agent_command(opts, url, job, k)
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        failures: list[str] = []

        def on_exit(index: int, code: int) -> None:
            if not node.rounds.finished:
                failures.append(f"agent-{index} exited with {code} (log: {logs}/agent-{index}.log)")
                node.stop(failures[-1])

        clock.pids = ["self", *([broker.pid] if broker and broker.pid else []),
                      *(p.pid for p in procs)]
        clock.agent_pid = procs[0].pid
        watcher = ExitWatcher(procs, on_exit)
        timer = threading.Timer(opts.timeout_s, node.stop, args=("bench timeout",))
        timer.start()
        started = time.monotonic()
        try:
            phase = node.run()
        finally:
            timer.cancel()
            coordinator = usage()
            broker_usage = usage(broker.pid) if broker and broker.pid else None
            watcher.close()
            stopped = stop_all(procs)
        closed = clock.closed
        if phase is not Phase.DONE or len(closed) != opts.rounds or clock.first_opened is None:
            why = "; ".join(failures) or node.rounds.message
            raise RuntimeError(f"fedmq run ended {phase.value} after {len(closed)} rounds: {why}")
        agents = [u for u, _ in stopped if u is not None]
        if len(agents) != opts.agents:
            raise RuntimeError(f"only {len(agents)} of {opts.agents} agents alive at the end")
        agent_0 = clock.peak(agents[0].peak_rss, 1)
        return {
            "job": job,
            "broker": url,
            "agent_command": " ".join(agent_command(opts, "URL", job, 0)),
            "startup_s": round(clock.first_opened - started, 3),
            "wall_s": round(closed[-1][0] - clock.first_opened, 4),
            "foreign_cpu_s": clock.foreign_cpu_s(),
            "rounds": [
                _round_row(m, rss) for (_, m), rss in zip(closed, clock.peak_rss, strict=True)
            ],
            "peak_rss": {
                "coordinator": clock.peak(coordinator.peak_rss, 0),
                "agent_0": agent_0,
                "agent_max": max(agent_0, *(a.peak_rss for a in agents)),
                "broker": broker_usage.peak_rss if broker_usage else None,
            },
            "cpu_s": {
                "coordinator_process": round(coordinator.cpu_s, 2),
                "agents_total": round(sum(a.cpu_s for a in agents), 2),
                "broker": round(broker_usage.cpu_s, 2) if broker_usage else None,
            },
            "agent_exit_codes": sorted({code for _, code in stopped}),
        }


def _round_row(m: RoundMetrics, peak_rss: tuple[int, int | None]) -> dict[str, Any]:
    return {
        "round": m.round,
        "accuracy": m.accuracy,
        "loss": m.loss,
        "seconds": round(m.duration_s, 4),
        "bytes_up": m.bytes_up,
        "bytes_down": m.bytes_down,
        "raw_bytes_up": m.raw_bytes_up,
        "raw_bytes_down": m.raw_bytes_down,
        "bytes_down_per_agent": m.bytes_down // m.addressed if m.addressed else None,
        "ratio_up": _ratio(m.raw_bytes_up, m.bytes_up),
        "ratio_down": _ratio(m.raw_bytes_down or 0, m.bytes_down),
        "ratio_both": _ratio(m.raw_bytes_up + (m.raw_bytes_down or 0), m.bytes_up + m.bytes_down),
        "accepted": m.accepted,
        "closed_by": m.closed_by.value,
        "secagg_dropped": dict(m.secagg) if m.secagg is not None else None,
        "peak_rss_coordinator": peak_rss[0],
        "peak_rss_agent_0": peak_rss[1],
    }


def _ratio(raw: int, sent: int) -> float | None:
    return round(raw / sent, 2) if raw and sent else None


def run_reference_once(opts: W1Options) -> dict[str, Any]:
    """The same workload in this process, plain torch (:func:`fedmq_tools.reference.run_reference`).
    """
    import torch

    from fedmq_tools.reference import run_reference

    machine, ours = system_cpu_s(), cpu_s(["self"])
    ref = run_reference(
        opts.variant,
        opts.rounds,
        opts.data_dir,
        None if opts.codec == "none" else opts.codec,
        task=opts.task,
        agents=opts.agents,
        threads=opts.ref_threads,
        downlink_delta=opts.downlink_delta,
        downlink=opts.downlink,
    )
    foreign = (system_cpu_s() - machine) - (cpu_s(["self"]) - ours)
    return {
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(ref["wall_s"], 4),
        # over the whole call, trainer set-up included: an upper bound for the timed part
        "foreign_cpu_s": round(max(foreign, 0.0), 2),
        "accuracy": ref["accuracy"],
        "seconds": [round(s, 4) for s in ref["round_s"]],
        "model_id": ref["model_id"],
    }


def run_centralised_once(opts: W1Options) -> dict[str, Any]:
    """One model on all the training data, as many epochs as W1 has rounds."""
    import torch

    from fedmq_tools.reference import run_centralised

    cen = run_centralised(opts.rounds, opts.data_dir, task=opts.task, threads=opts.ref_threads)
    return {
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(cen["wall_s"], 4),
        "accuracy": cen["accuracy"],
    }


def compare(runs: list[dict[str, Any]], refs: list[dict[str, Any]]) -> dict[str, Any]:
    """How far fedmq is from the reference: accuracy per round (every run against the
    first reference, all being deterministic) and the median walls' ratio."""
    if not refs:
        return {}
    diffs = [
        abs(r["accuracy"] - a)
        for run in runs
        for r, a in zip(run["rounds"], refs[0]["accuracy"], strict=True)
    ]
    ratio = statistics.median(r["wall_s"] for r in runs) / statistics.median(
        r["wall_s"] for r in refs
    )
    return {
        "max_abs_accuracy_diff": max(diffs),
        "wall_ratio": round(ratio, 3),
        "accuracy_within_goal": max(diffs) <= ACCURACY_TOLERANCE,
        "wall_within_goal": ratio <= WALL_RATIO_GOAL,
    }


def run_w1(opts: W1Options) -> dict[str, Any]:
    """Run fedmq and the reference ``opts.repeat`` times each, alternately, then the
    centralised baseline, and compare; returns the results document.

    ``fedmq`` and ``reference`` hold the first runs in full; ``repeats`` the wall
    and the foreign CPU (seconds other processes used meanwhile) of every run.
    """
    if opts.variant not in VARIANTS:
        raise ValueError(f"--variant must be one of {', '.join(VARIANTS)}")
    if opts.repeat < 1:
        raise ValueError("repeat must be >= 1")
    runs, refs = [], []
    for _ in range(opts.repeat):
        with tempfile.TemporaryDirectory(prefix="fedmq-w1-") as tmp:
            runs.append(run_fedmq(opts, Path(tmp)))
        if opts.reference:
            refs.append(run_reference_once(opts))
    compressed = opts.codec != "none" or opts.downlink_delta is not None or opts.downlink != "fp32"
    lossless = None  # the same workload with nothing compressed, for the accuracy it costs
    if opts.reference and compressed:
        lossless = run_reference_once(
            replace(opts, codec="none", downlink_delta=None, downlink="fp32")
        )
    doc: dict[str, Any] = {
        "workload": {
            "variant": opts.variant,
            "partition": VARIANTS[opts.variant],
            "codec": opts.codec,
            "downlink_delta": opts.downlink_delta,
            "downlink": opts.downlink,
            "secagg": opts.secagg is not None,
            "drop_after_mask": opts.drop_after_mask,
            "task": opts.task,
            "agents": opts.agents,
            "rounds": opts.rounds,
        },
        "fedmq": runs[0],
        "repeats": {
            "fedmq": [_repeat_row(r) for r in runs],
            "reference": [_repeat_row(r) for r in refs],
        },
        "comparison": compare(runs, refs),
        "bytes": bytes_summary(runs[0]["rounds"]),
    }
    if refs:
        doc["reference"] = refs[0]
    if lossless is not None:
        doc["lossless_reference"] = lossless
        doc["comparison"]["final_vs_lossless"] = round(
            runs[0]["rounds"][-1]["accuracy"] - lossless["accuracy"][-1], 4
        )
    if opts.centralised:
        doc["centralised"] = run_centralised_once(opts)
    return doc


def bytes_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each way's and both ways' ratio to raw float32: per round (worst, mean) and the run's."""
    both = [r["ratio_both"] for r in rows if r["ratio_both"] is not None]
    total = {k: sum(r[k] or 0 for r in rows)
             for k in ("bytes_up", "bytes_down", "raw_bytes_up", "raw_bytes_down")}
    sent = total["bytes_up"] + total["bytes_down"]
    return {
        "worst_round_ratio_both": min(both, default=None),
        "mean_bytes_per_round_both": round(sent / len(rows)) if rows else None,
        "run_ratio_up": _ratio(total["raw_bytes_up"], total["bytes_up"]),
        "run_ratio_down": _ratio(total["raw_bytes_down"], total["bytes_down"]),
        "run_ratio_both": _ratio(total["raw_bytes_up"] + total["raw_bytes_down"], sent),
    }


def _repeat_row(run: dict[str, Any]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in run["rounds"]] if "rounds" in run else run["seconds"]
    return {
        "wall_s": run["wall_s"],
        "median_round_s": round(statistics.median(seconds), 4),
        "foreign_cpu_s": run["foreign_cpu_s"],
    }


def report(doc: dict[str, Any]) -> str:
    """The run as a table a person reads: one line per round, then the totals."""
    run, ref = doc["fedmq"], doc.get("reference")
    cen = doc.get("centralised")
    lines = [
        "round  acc(fedmq)  acc(ref)  acc(central)  s(fedmq)  s(ref)   up        down"
        "      peak RSS coordinator / agent-0",
    ]
    for i, r in enumerate(run["rounds"]):
        ref_acc = f"{ref['accuracy'][i]:.4f}" if ref else "-"
        ref_s = f"{ref['seconds'][i]:.3f}" if ref else "-"
        cen_acc = f"{cen['accuracy'][i]:.4f}" if cen else "-"
        lines.append(
            f"{r['round']:>5}  {r['accuracy']:.4f}      {ref_acc:<8}  {cen_acc:<12}  "
            f"{r['seconds']:<8.3f}  {ref_s:<7}  {human_bytes(r['bytes_up']):<8}  "
            f"{human_bytes(r['bytes_down']):<8}  {human_bytes(r['peak_rss_coordinator'])} / "
            f"{human_bytes(r['peak_rss_agent_0']) if r['peak_rss_agent_0'] else '-'}"
        )
    for name, rows in doc["repeats"].items():
        walls = ", ".join(
            f"{r['wall_s']:.2f} s (median round {r['median_round_s']:.3f} s, "
            f"foreign CPU {r['foreign_cpu_s']:.1f} s)"
            for r in rows
        )
        lines.append(f"wall {name}: {walls or '-'}")
    if ref:
        lines.append(f"reference: one process, {ref['torch_threads']} torch threads")
    if cen:
        final = cen["accuracy"][-1]
        lines.append(f"centralised: {cen['wall_s']:.2f} s, final accuracy {final:.4f}")
    rss = run["peak_rss"]
    lines.append(
        f"peak RSS: coordinator {human_bytes(rss['coordinator'])}, agent-0 "
        f"{human_bytes(rss['agent_0'])} (max {human_bytes(rss['agent_max'])}), broker "
        + (human_bytes(rss["broker"]) if rss["broker"] else "-")
    )
    cmp = doc.get("comparison") or {}
    if cmp:
        lines.append(
            f"max |acc(fedmq) - acc(ref)| = {cmp['max_abs_accuracy_diff']:.4f} "
            f"(goal <= {ACCURACY_TOLERANCE}); wall ratio of medians {cmp['wall_ratio']:.3f} "
            f"(goal <= {WALL_RATIO_GOAL})"
        )
    if "lossless_reference" in doc:
        lines.append(f"lossless reference final accuracy "
                     f"{doc['lossless_reference']['accuracy'][-1]:.4f}; fedmq final - lossless = "
                     f"{cmp['final_vs_lossless']:+.4f}")
    b = doc["bytes"]
    lines.append(f"bytes vs raw float32: up {b['run_ratio_up']}x, down {b['run_ratio_down']}x, "
                 f"both ways {b['run_ratio_both']}x (worst round {b['worst_round_ratio_both']}x)")
    return "\n".join(lines)
