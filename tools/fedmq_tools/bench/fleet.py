"""``fedmq swarm``: N simulated agents with the numpy trainer, packed into P processes.

Each process runs one :class:`fedmq_tools.swarm.Swarm`: one thread, one MQTT
connection per agent. With ``processes > 1`` the command starts P copies of
itself, each hosting a contiguous range of the N shards, and waits for them.
Invariant: never imports torch, so a process costs what a torch-free device's
agent costs, times its share of agents.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType

from edge_agent.agent import AgentCore
from edge_agent.numpy_trainer import NumpyTrainer
from edge_agent.trainer import Trainer
from fedmq.fleet_schedule import FleetSchedule, spec_argv
from fedmq.fleet_schedule import FleetSpec as Unevenness
from fedmq.tasks import DataConfig, agent_data, get_task, load_dataset, parse_partition
from fedmq_tools.swarm import Swarm, SwarmStats
from transport.connection import BrokerURL


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """Which agents a swarm process hosts: shards ``first .. first+count-1`` of ``total``."""

    broker: str
    job: str
    task: str = "mnist-logreg"
    count: int = 1
    first: int = 0
    total: int | None = None
    id_prefix: str = "agent-"
    partition: str | None = None
    data_dir: Path | None = None
    data_seed: int = 0
    mqtt5: bool = True
    keepalive_s: int = 60
    exit_when_done: bool = True
    #: the local address the agents connect from ("": any; see :class:`~fedmq_tools.swarm.Swarm`)
    source_address: str = ""
    #: speed classes and availability (fedmq/fleet_schedule.py), the same in every process
    uneven: Unevenness = field(default_factory=Unevenness)

    @property
    def of(self) -> int:
        return self.total or self.first + self.count


def shard_count(agents: int, rows: int, partition: str) -> int:
    """How many distinct shards ``agents`` agents can be given from ``rows`` training rows
    (the ``shards`` partition cuts two label-sorted pieces per shard)."""
    per_shard = 2 if parse_partition(partition).kind == "shards" else 1
    return max(1, min(agents, rows // per_shard))


def build_members(spec: FleetSpec) -> list[tuple[AgentCore, Trainer]]:
    """An (AgentCore, NumpyTrainer) pair per hosted agent, each on its own rows.

    Agent ``i`` holds shard ``i mod S`` of ``S``, where S is the fleet size, or
    fewer when the task has fewer rows than that (a fleet larger than the
    dataset then holds some rows twice, rather than failing to start).

    Raises:
        ValueError: for a task the numpy trainer cannot train, or bad shards.
    """
    task = get_task(spec.task)
    data = DataConfig(data_dir=spec.data_dir, seed=spec.data_seed)
    partition = spec.partition or task.partition
    shards = shard_count(spec.of, len(load_dataset(task, data).y_train), partition)
    members: list[tuple[AgentCore, Trainer]] = []
    for index in range(spec.first, spec.first + spec.count):
        x, y = agent_data(task, data, index % shards, shards, partition)
        trainer = NumpyTrainer(task.model, task.kind, x, y, index=index)
        core = AgentCore(
            spec.job, f"{spec.id_prefix}{index}", samples=trainer.samples, trainer=trainer.name
        )
        members.append((core, trainer))
    return members


def split(count: int, processes: int) -> list[tuple[int, int]]:
    """(first, count) per process: ``count`` agents in runs that differ by at most one."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    base, extra = divmod(count, processes)
    out, first = [], 0
    for i in range(min(processes, count)):
        n = base + (1 if i < extra else 0)
        out.append((first, n))
        first += n
    return out


def swarm_command(spec: FleetSpec) -> list[str]:
    """The command line of one swarm process hosting ``spec``'s agents."""
    cmd = [
        sys.executable, "-m", "fedmq", "swarm",
        "--broker", spec.broker, "--job", spec.job, "--task", spec.task,
        "--count", str(spec.count), "--first", str(spec.first), "--of", str(spec.of),
        "--id-prefix", spec.id_prefix, "--data-seed", str(spec.data_seed),
        "--keepalive", str(spec.keepalive_s), "--processes", "1",
    ]
    if spec.partition:
        cmd += ["--partition", spec.partition]
    if spec.data_dir is not None:
        cmd += ["--data", str(spec.data_dir)]
    if not spec.mqtt5:
        cmd.append("--mqtt311")
    if not spec.exit_when_done:
        cmd.append("--keep-running")
    if spec.source_address:
        cmd += ["--source-address", spec.source_address]
    return cmd + spec_argv(spec.uneven)


def run_in_process(spec: FleetSpec) -> SwarmStats:
    """Host ``spec``'s agents on this thread until they are done; SIGINT/SIGTERM stop them."""
    swarm = Swarm(
        build_members(spec),
        BrokerURL.parse(spec.broker),
        mqtt5=spec.mqtt5,
        keepalive_s=spec.keepalive_s,
        exit_when_done=spec.exit_when_done,
        schedule=FleetSchedule(spec.uneven, spec.of) if spec.uneven.uneven else None,
        first=spec.first,
        source_address=spec.source_address,
    )

    def handler(_signum: int, _frame: FrameType | None) -> None:
        swarm.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return swarm.run()


def spawn(
    spec: FleetSpec, processes: int, logs: Path | None = None
) -> list[subprocess.Popen[bytes]]:
    """Start ``processes`` swarm processes sharing ``spec.count`` agents; with ``logs``,
    process i writes its output to ``logs/swarm-i.log`` instead of this terminal."""
    procs = []
    for i, (first, count) in enumerate(split(spec.count, processes)):
        part = replace(spec, first=spec.first + first, count=count, total=spec.of)
        out = None if logs is None else (logs / f"swarm-{i}.log").open("wb")
        try:
            procs.append(subprocess.Popen(swarm_command(part), stdout=out, stderr=out))
        finally:
            if out is not None:
                out.close()  # the child holds its own copy
    return procs


def run_processes(spec: FleetSpec, processes: int) -> int:
    """Run ``spec`` across ``processes`` child processes; the worst exit code wins."""
    procs = spawn(spec, processes)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for proc in procs:
            proc.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [proc.wait() for proc in procs]
    return max(codes, key=abs)


def report_line(spec: FleetSpec, stats: SwarmStats) -> str:
    refused = f", {len(stats.refused)} refused" if stats.refused else ""
    return (
        f"swarm {spec.first}..{spec.first + spec.count - 1} of {spec.of}: "
        f"{stats.rounds_trained} trainings, {stats.updates_sent} updates sent, "
        f"{stats.reconnects} reconnects{refused}"
    )


def exit_code(stats: SwarmStats) -> int:
    return 3 if stats.refused else 0

