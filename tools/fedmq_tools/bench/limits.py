"""``fedmq bench limits``: agents under a device's memory and CPU, enforced by cgroups.

Each case is one real ``fedmq agent`` process (W1's shard 0 of 20, one thread)
in a cgroup made for it: a memory limit of the device's RAM (no swap: the
machine has none, and ``memory.memsw`` is set equal where the kernel has it) and
a CPU quota (CFS). It runs a few rounds against a coordinator here (evaluation
off); the case fits if the agent trains every round, is alive at the end and its
peak RSS (``VmHWM``) is within the limit. RSS, not the cgroup's charge, because
file pages (torch's libraries) that other processes here cached first are charged
to them, not to the case's cgroup; on a device the agent maps them alone.
When it does not fit, the report says how it failed: killed by the kernel's OOM
killer (a crash), or declined by its resource policy (with the reason it sent).

cgroup v1 only (``memory`` and ``cpu`` controllers under /sys/fs/cgroup): on the
machine this was written for, the cgroup2 hierarchy at /sys/fs/cgroup/unified
has neither controller. Child cgroups are made under this process's own, so the
limits nest inside whatever already contains it; they are removed afterwards.

The CPU quota is a share of *this* machine's CPU time; a Pi's core is slower
than that in ways a quota does not model, so round times here are not a Pi's.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmq.broker import LocalBroker
from fedmq_tools.bench.device import DeviceRun, run_device

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024
CFS_PERIOD_US = 100_000
#: a round's deadline: 4x the slowest case's round (torch's CNN under a quarter CPU, 28 s);
#: a round whose only agent declined closes at it (the coordinator waits for min_replies)
DEADLINE_S = 120.0


@dataclass(frozen=True, slots=True)
class Profile:
    """A device's memory and a CPU quota standing in for its slow cores."""

    name: str
    memory_mb: int
    #: CFS quota in CPUs of this machine (0.25: a quarter of one core's time)
    cpus: float
    note: str


PROFILES = {
    p.name: p
    for p in (
        Profile("pi-zero-2w", 512, 0.25, "Raspberry Pi Zero 2 W: 512 MB RAM, 4x Cortex-A53 1 GHz"),
        Profile("pi-zero-2w-384", 384, 0.25, "a Pi Zero 2 W whose agent unit has MemoryMax=384M, "
                "leaving 128 MB to the kernel, the GPU's share and other services"),
        Profile("pi4-2gb", 2048, 1.0, "Raspberry Pi 4 Model B 2 GB: 4x Cortex-A72 1.5 GHz"),
    )
}
#: trainer/task pairs: both trainers, the 2NN and the CNN
CASES = ("numpy/mnist-2nn", "torch/mnist-2nn", "numpy/mnist-cnn", "torch/mnist-cnn")


def _own_path(controller: str) -> str:
    """This process's cgroup (v1) for ``controller``, from /proc/self/cgroup."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path.lstrip("/")
    raise RuntimeError(f"no cgroup v1 {controller} controller for this process")


class Cgroup:
    """A memory and a cpu cgroup (v1) for one child process; removed by :meth:`close`."""

    def __init__(self, name: str, memory_bytes: int, cpus: float) -> None:
        self.memory = CGROUP_ROOT / "memory" / _own_path("memory") / name
        self.cpu = CGROUP_ROOT / "cpu" / _own_path("cpu") / name
        for path in (self.memory, self.cpu):
            path.mkdir(exist_ok=True)
        (self.memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        memsw = self.memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(str(memory_bytes))
        (self.cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (self.cpu / "cpu.cfs_quota_us").write_text(str(int(cpus * CFS_PERIOD_US)))

    def wrap(self, argv: list[str]) -> tuple[str, ...]:
        """``argv`` run inside both cgroups (the shell joins them, then execs it)."""
        join = 'echo $$ > "$1" && echo $$ > "$2" && shift 2 && exec "$@"'
        return ("sh", "-c", join, "sh", str(self.memory / "cgroup.procs"),
                str(self.cpu / "cgroup.procs"), *argv)

    def stats(self) -> dict[str, int]:
        """Peak usage (page cache included), limit hits, OOM kills, CPU throttling."""
        def read(path: Path) -> dict[str, int]:
            return {k: int(v) for k, v in (ln.split() for ln in path.read_text().splitlines())}

        oom = read(self.memory / "memory.oom_control")
        cpu = read(self.cpu / "cpu.stat")
        return {
            "max_usage_bytes": int((self.memory / "memory.max_usage_in_bytes").read_text()),
            "failcnt": int((self.memory / "memory.failcnt").read_text()),
            "oom_kills": oom.get("oom_kill", 0),
            "nr_throttled": cpu.get("nr_throttled", 0),
        }

    def close(self) -> None:
        for path in (self.memory, self.cpu):
            with contextlib.suppress(OSError):
                path.rmdir()


@contextlib.contextmanager
def cgroup(name: str, profile: Profile) -> Iterator[Cgroup]:
    group = Cgroup(name, profile.memory_mb * MIB, profile.cpus)
    try:
        yield group
    finally:
        group.close()


def run_case(profile: Profile, case: str, url: str, data_dir: Path | None, *, rounds: int,
             logs: Path) -> dict[str, Any]:
    """One trainer/task under one profile: fits or not, and how it ended."""
    trainer, task = case.split("/")
    name = f"fedmq-{profile.name}-{trainer}-{task}-{os.getpid()}"
    with cgroup(name, profile) as group:
        # the flags DeviceRun appends land in "$@" of the shell that joins the cgroups
        run = DeviceRun(prefix=group.wrap([sys.executable, "-m", "fedmq"]),
                        job=f"lim-{profile.name}-{trainer}-{task}", task=task,
                        trainer=trainer, agents=1, rounds=rounds, evaluate=False,
                        deadline_s=DEADLINE_S, data_dir=data_dir,
                        agent_data=str(data_dir) if data_dir else None)
        doc = run_device(run, url, logs / f"{profile.name}-{trainer}-{task}.log")
        doc["cgroup"] = group.stats()
    trained = [r for r in doc.get("rounds", []) if "train_s" in r]
    peak = doc.get("peak_rss_training")
    doc.update(profile=profile.name, trainer=trainer, task=task,
               # every resident page counts, as on a device where the agent alone maps its
               # libraries: here, pages other processes cached first are charged to them
               peak_within_limit=peak is not None and peak <= profile.memory_mb * MIB,
               fits=bool(doc.get("completed")) and len(trained) == rounds
               and doc["alive_at_end"] and peak is not None and peak <= profile.memory_mb * MIB)
    return doc


def run_limits(data_dir: Path | None, profiles: list[str] | None, cases: list[str] | None,
               rounds: int, logs: Path) -> dict[str, Any]:
    """Every case under every profile, one after another (never two at once)."""
    chosen = [PROFILES[p] for p in (profiles or PROFILES)]
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    with LocalBroker() as broker:
        for profile in chosen:
            for case in cases or CASES:
                results.append(
                    run_case(profile, case, broker.url, data_dir, rounds=rounds, logs=logs)
                )
    return {
        "profiles": {p.name: {"memory_mb": p.memory_mb, "cpus": p.cpus, "note": p.note}
                     for p in chosen},
        "rounds": rounds,
        "cases": results,
    }


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.0f} MiB"


def report(doc: dict[str, Any]) -> str:
    lines = ["profile      trainer/task      fits  idle RSS  train peak  cgroup peak  round s  "
             "how it ended"]
    for c in doc["cases"]:
        trains = [r["train_s"] for r in c.get("rounds", []) if "train_s" in r]
        declines = {u["declined"] for u in c.get("device_updates", {}).values()
                    if u.get("declined")}
        if not c.get("started"):
            ended = f"did not start (exit {c['exit_code']}): {c['log_tail'].splitlines()[-1:]}"
        elif declines:
            ended = "declined: " + "; ".join(sorted(declines))
        else:
            ended = f"{c['phase']}, exit {c['exit_code']}, OOM kills {c['cgroup']['oom_kills']}"
        lines.append(
            f"{c['profile']:<12} {c['trainer'] + '/' + c['task']:<17} "
            f"{'yes' if c['fits'] else 'NO':<5} {_mb(c.get('idle', {}).get('rss')):>8}  "
            f"{_mb(c.get('peak_rss_training')):>10}  {_mb(c['cgroup']['max_usage_bytes']):>11}  "
            f"{(sum(trains) / len(trains)) if trains else float('nan'):>7.2f}  {ended}"
        )
    return "\n".join(lines)
