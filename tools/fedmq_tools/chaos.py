"""``fedmq chaos``: train while agents die, the broker restarts and the coordinator is killed.

Everything runs as separate processes around a private Mosquitto: the coordinator
(``fedmq coordinator --run-dir``) and one ``fedmq agent`` per agent. A seeded
schedule of faults fires at random moments inside rounds:

- ``agent``: SIGKILL a live agent; it is started again (a fresh process, state lost)
  one or two rounds later, or after two deadlines, whichever comes first;
- ``broker``: stop and start the broker on the same port (retained messages and
  sessions are lost: nothing is persisted);
- ``coordinator``: SIGKILL the coordinator and start it again with ``--resume``.

Then the same job runs again with no fault. The report comes from the coordinator's
own records: the final checkpoint's history (every closed round, across restarts)
and ``metrics.jsonl`` (appended by each coordinator process). It states, per round,
the updates accepted, declined, rejected (by reason) and missing (agents in the
fleet that did not answer before the round closed: down, or lost in flight), that
every round was closed exactly once, whether any process crashed (exited on its
own with an error, or logged a traceback), and the final accuracy next to the clean
run's.

The script's waits for progress are on a condition with timeouts; the random
delays that place a fault inside a round are the experiment, not synchronisation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import load_checkpoint
from fedmq.broker import LocalBroker
from fedmq.launch import CHECKPOINT_NAME
from protocol import Phase, Topics, WireError, decode_metrics, decode_status
from transport.connection import BrokerURL

FAULT_KINDS = ("agent", "broker", "coordinator")
#: exit codes of processes this script stopped itself (SIGKILL, or SIGTERM at the end)
_OURS = (-signal.SIGKILL, -signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    task: str = "mnist-2nn"
    agents: int = 20
    rounds: int = 20
    #: faults of each kind: agents killed, broker restarts, coordinator kills
    agent_kills: int = 6
    broker_restarts: int = 2
    coordinator_kills: int = 2
    seed: int = 0
    deadline_s: float = 20.0
    data_dir: Path | None = None
    workdir: Path = Path("fedmq-runs/chaos")
    timeout_s: float = 3600.0
    clean: bool = True


@dataclass(frozen=True, slots=True)
class Fault:
    """Fire ``kind`` once round ``at_round`` has been open for ``offset`` of a round's time."""

    kind: str
    at_round: int
    offset: float
    #: agent faults: how many rounds the agent stays down
    down_rounds: int = 1


def schedule(opts: ChaosOptions) -> list[Fault]:
    """The seeded faults, in firing order. The coordinator is never killed in round 1:
    before the first checkpoint there is nothing to resume."""
    rng = random.Random(opts.seed)
    last = max(opts.rounds - 1, 1)
    faults = [Fault("agent", rng.randint(1, last), rng.random(), rng.randint(1, 2))
              for _ in range(opts.agent_kills)]
    faults += [Fault("broker", rng.randint(1, last), rng.random())
               for _ in range(opts.broker_restarts)]
    faults += [Fault("coordinator", rng.randint(min(2, last), last), rng.random())
               for _ in range(opts.coordinator_kills)]
    return sorted(faults, key=lambda f: (f.at_round, f.offset))


class JobWatcher:
    """Follows a job's status and metrics topics (reconnecting after broker restarts)."""

    def __init__(self, url: str, job: str) -> None:
        self.topics = Topics(job)
        self.cond = threading.Condition()
        self.open_round = 0
        self.phase: Phase | None = None
        #: monotonic time each round was first seen open
        self.opened_at: dict[int, float] = {}
        self.durations: list[float] = []
        broker = BrokerURL.parse(url)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = lambda c, *_: c.subscribe(
            [(self.topics.status, 1), (self.topics.metrics, 1)])
        self._client.on_message = self._on_message
        self._client.connect_async(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            if message.topic == self.topics.status:
                status = decode_status(bytes(message.payload))
                with self.cond:
                    self.phase = status.phase
                    if status.phase is Phase.TRAINING:
                        self.open_round = max(self.open_round, status.round)
                        self.opened_at.setdefault(status.round, time.monotonic())
                    self.cond.notify_all()
            else:
                metrics = decode_metrics(bytes(message.payload))
                with self.cond:
                    self.durations.append(metrics.duration_s)
                    self.cond.notify_all()
        except WireError:
            return  # not ours to judge here; the coordinator counts what it rejects

    def round_s(self) -> float:
        """A typical round's length so far (1 s before any round closed)."""
        with self.cond:
            recent = self.durations[-5:]
        return sum(recent) / len(recent) if recent else 1.0

    def wait(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait(timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class _Fleet:
    """The processes of one job and what happened to them."""

    opts: ChaosOptions
    url: str
    job: str
    run_dir: Path
    agents: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: Counter[str] = field(default_factory=Counter)
    exits: list[tuple[str, int]] = field(default_factory=list)
    coordinator: subprocess.Popen[bytes] | None = None
    #: killed agents to start again: (round to come back at, latest monotonic time, index)
    down: list[tuple[int, float, int]] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.starts[name] += 1
        log = self.run_dir / f"{name}.{self.starts[name]}.log"
        data = ["--data", str(self.opts.data_dir)] if self.opts.data_dir else []
        return subprocess.Popen([sys.executable, "-m", "fedmq", *args, "--broker", self.url,
                                 "--job", self.job, "--task", self.opts.task, *data],
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def start_agent(self, k: int) -> None:
        self.agents[k] = self._spawn(f"agent-{k}", [
            "agent", "--agent-id", f"agent-{k}", "--shard", f"{k}/{self.opts.agents}",
            "--threads", "1", "--exit-when-done"])

    def start_coordinator(self, resume: bool) -> None:
        waiting_for = len(self.live_agents()) if resume else self.opts.agents
        args = ["coordinator", "--rounds", str(self.opts.rounds), "--deadline",
                str(self.opts.deadline_s), "--min-agents", str(max(waiting_for, 1)),
                "--min-replies", str(max(self.opts.agents // 2, 1)),
                "--run-dir", str(self.run_dir)]
        self.coordinator = self._spawn("coordinator", [*args, "--resume"] if resume else args)

    def live_agents(self) -> list[int]:
        return [k for k, p in self.agents.items() if p.poll() is None]

    def kill(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        proc.kill()
        self.exits.append((name, proc.wait(30)))

    def stop_all(self) -> None:
        for k, proc in self.agents.items():
            if proc.poll() is None:
                proc.terminate()
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(30)
            self.exits.append((f"agent-{k}", code))
        if self.coordinator is not None and self.coordinator.poll() is None:
            self.kill("coordinator", self.coordinator)


def run_job(opts: ChaosOptions, broker: LocalBroker, job: str, faults: list[Fault],
            ) -> dict[str, Any]:
    """Run ``job`` to the end with ``faults``; return what happened and the run's records."""
    run_dir = opts.workdir / job
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (*run_dir.glob("*.log"), run_dir / CHECKPOINT_NAME, run_dir / "metrics.jsonl"):
        stale.unlink(missing_ok=True)
    fleet = _Fleet(opts, broker.url, job, run_dir)
    watcher = JobWatcher(broker.url, job)
    rng = random.Random(opts.seed + 1)
    started = time.monotonic()
    pending = list(faults)
    applied: list[dict[str, Any]] = []
    crashed: list[str] = []
    try:
        fleet.start_coordinator(resume=False)
        for k in range(opts.agents):
            fleet.start_agent(k)
        while time.monotonic() - started < opts.timeout_s:
            coordinator = fleet.coordinator
            assert coordinator is not None
            code = coordinator.poll()
            if code is not None:
                fleet.exits.append(("coordinator", code))
                if code != 0:
                    crashed.append(f"coordinator exited with {code}")
                break
            watcher.wait(0.2)
            now, current = time.monotonic(), watcher.open_round
            for back_at, latest, k in list(fleet.down):
                if current >= back_at or now >= latest:
                    fleet.down.remove((back_at, latest, k))
                    fleet.start_agent(k)
                    applied.append(_event(started, current, "agent back", f"agent-{k}"))
            while pending and _due(pending[0], watcher, now):
                fault = pending.pop(0)
                target = _fire(fault, fleet, broker, rng, now)
                applied.append(_event(started, current, fault.kind, target))
        else:
            crashed.append(f"timed out after {opts.timeout_s} s")
    finally:
        watcher.close()
        fleet.stop_all()
    crashed += [f"{name} exited with {code}" for name, code in fleet.exits
                if code not in (0, *_OURS) and name != "coordinator"]
    crashed += [f"{log.name}: traceback" for log in sorted(run_dir.glob("*.log"))
                if "Traceback" in log.read_text(errors="replace")]
    return {**_records(opts, run_dir), "faults": applied, "crashes": crashed,
            "wall_s": round(time.monotonic() - started, 1),
            "process_starts": dict(fleet.starts)}


def _due(fault: Fault, watcher: JobWatcher, now: float) -> bool:
    opened = watcher.opened_at.get(fault.at_round)
    if watcher.open_round > fault.at_round:
        return True  # its round went by (quickly); fire now rather than never
    return opened is not None and now >= opened + fault.offset * watcher.round_s()


def _fire(fault: Fault, fleet: _Fleet, broker: LocalBroker, rng: random.Random,
          now: float) -> str:
    if fault.kind == "broker":
        broker.restart()
        return "mosquitto"
    if fault.kind == "coordinator":
        assert fleet.coordinator is not None
        fleet.kill("coordinator", fleet.coordinator)
        resume = (fleet.run_dir / CHECKPOINT_NAME).exists()
        fleet.start_coordinator(resume=resume)
        return "coordinator" + (" (resumed)" if resume else " (no checkpoint yet: fresh)")
    live = fleet.live_agents()
    if not live:
        return "none alive"
    k = rng.choice(live)
    fleet.kill(f"agent-{k}", fleet.agents[k])
    fleet.down.append((fault.at_round + fault.down_rounds, now + 2 * fleet.opts.deadline_s, k))
    return f"agent-{k}"


def _event(started: float, round_no: int, kind: str, target: str) -> dict[str, Any]:
    return {"at_s": round(time.monotonic() - started, 2), "round": round_no, "kind": kind,
            "target": target}


def _records(opts: ChaosOptions, run_dir: Path) -> dict[str, Any]:
    """Per-round figures from the final checkpoint, cross-checked with metrics.jsonl."""
    path = run_dir / CHECKPOINT_NAME
    history = load_checkpoint(path).history if path.exists() else ()
    logged = [json.loads(line)["round"] for line in
              (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").exists() else []
    rounds = [m.round for m in history]
    per_round = [{
        "round": m.round, "closed_by": m.closed_by.value, "accepted": m.accepted,
        "declined": m.declined, "rejected": dict(m.rejected),
        "missing": opts.agents - m.accepted - m.declined, "accuracy": m.accuracy,
    } for m in history]
    rejected: Counter[str] = Counter()
    for m in history:
        rejected.update(m.rejected)
    return {
        "rounds": per_round,
        "rounds_completed": len(history),
        "every_round_once": rounds == list(range(1, opts.rounds + 1)),
        "runs": sorted({m.run for m in history}),
        "metrics_jsonl_rounds": logged,
        "metrics_jsonl_consistent": len(set(logged)) == len(logged) and set(logged) <= set(rounds),
        "accepted": sum(m.accepted for m in history),
        "declined": sum(m.declined for m in history),
        "rejected": dict(rejected),
        "missing": sum(r["missing"] for r in per_round),
        "final_accuracy": history[-1].accuracy if history else None,
    }


def run_chaos(opts: ChaosOptions, broker: LocalBroker | None = None) -> dict[str, Any]:
    """The chaotic run, then (unless ``opts.clean`` is off) the same job with no fault.

    ``broker``: a started private broker to use (and restart); default: a new one.
    """
    faults = schedule(opts)
    with contextlib.ExitStack() as stack:
        if broker is None:
            broker = stack.enter_context(LocalBroker())
        chaos = run_job(opts, broker, "chaos", faults)
        clean = run_job(opts, broker, "clean", []) if opts.clean else None
    doc: dict[str, Any] = {"settings": {**asdict(opts), "workdir": str(opts.workdir),
                                        "data_dir": str(opts.data_dir)},
                           "schedule": [asdict(f) for f in faults], "chaos": chaos,
                           "clean": clean}
    gap = None
    if clean is not None and chaos["final_accuracy"] is not None \
            and clean["final_accuracy"] is not None:
        gap = round(100 * (clean["final_accuracy"] - chaos["final_accuracy"]), 2)
    doc["verdict"] = {
        "every_round_accounted_for": chaos["every_round_once"]
        and chaos["metrics_jsonl_consistent"] and len(chaos["runs"]) == 1,
        "no_crash": not chaos["crashes"] and not (clean or {}).get("crashes"),
        "points_below_clean": gap,
        "within_one_point": gap is not None and abs(gap) <= 1.0,
    }
    return doc


def report(doc: dict[str, Any]) -> str:
    """The chaos run as text: faults, one line per round, totals and the verdict."""
    chaos, verdict = doc["chaos"], doc["verdict"]
    lines = ["faults fired:"]
    lines += [f"  {f['at_s']:>7.1f} s  round {f['round']:>3}  {f['kind']:<12} {f['target']}"
              for f in chaos["faults"]]
    lines.append("round  closed_by    accepted  declined  missing  rejected            accuracy")
    for r in chaos["rounds"]:
        rejected = ",".join(f"{k}={v}" for k, v in sorted(r["rejected"].items())) or "-"
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        lines.append(f"{r['round']:>5}  {r['closed_by']:<11} {r['accepted']:>9} "
                     f"{r['declined']:>9} {r['missing']:>8}  {rejected:<18} {acc}")
    clean = doc["clean"]
    lines += [
        f"rounds completed {chaos['rounds_completed']}/{doc['settings']['rounds']}; "
        f"updates accepted {chaos['accepted']}, declined {chaos['declined']}, "
        f"rejected {sum(chaos['rejected'].values())} {chaos['rejected']}, "
        f"missing {chaos['missing']}",
        f"process starts {chaos['process_starts']}; wall {chaos['wall_s']} s",
        f"crashes: {chaos['crashes'] or 'none'}",
        f"final accuracy {chaos['final_accuracy']}"
        + (f" vs clean {clean['final_accuracy']} ({verdict['points_below_clean']:+.2f} points "
           "below)" if clean is not None and verdict["points_below_clean"] is not None else ""),
        f"every round accounted for: {verdict['every_round_accounted_for']}; "
        f"no crash: {verdict['no_crash']}; within 1 point of clean: {verdict['within_one_point']}",
    ]
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    """Register ``fedmq chaos``."""
    d = ChaosOptions()
    p = sub.add_parser("chaos", help="train while killing agents, the broker and the coordinator",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=d.task)
    p.add_argument("--agents", type=int, default=d.agents, help="agent processes")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--agent-kills", type=int, default=d.agent_kills)
    p.add_argument("--broker-restarts", type=int, default=d.broker_restarts)
    p.add_argument("--coordinator-kills", type=int, default=d.coordinator_kills)
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the fault schedule")
    p.add_argument("--deadline", type=float, default=d.deadline_s, help="seconds per round")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    p.add_argument("--workdir", type=Path, default=d.workdir, help="run dirs and process logs")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="give up after this")
    p.add_argument("--no-clean", action="store_true", help="skip the fault-free comparison run")
    p.add_argument("--out", type=Path, help="write the report as JSON here too")
    p.set_defaults(func=cmd_chaos)


def cmd_chaos(args: argparse.Namespace) -> int:
    opts = ChaosOptions(task=args.task, agents=args.agents, rounds=args.rounds,
                        agent_kills=args.agent_kills, broker_restarts=args.broker_restarts,
                        coordinator_kills=args.coordinator_kills, seed=args.seed,
                        deadline_s=args.deadline, data_dir=args.data, workdir=args.workdir,
                        timeout_s=args.timeout, clean=not args.no_clean)
    doc = run_chaos(opts)
    print(report(doc))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    verdict = doc["verdict"]
    ok = verdict["every_round_accounted_for"] and verdict["no_crash"]
    return 0 if ok and (verdict["within_one_point"] or doc["clean"] is None) else 1
