"""``fedmq bench device``: one agent process, started as a device starts it, through a real run.

The agent under test is a real ``fedmq agent`` process behind a command prefix:
``chroot ROOT /opt/fedmq/bin/fedmq`` for an emulated Raspberry Pi root
(``scripts/pi-check.sh``), or this venv's ``fedmq`` inside a cgroup for the
device-sized limits (:mod:`fedmq_tools.bench.limits`). A coordinator and, for
W1, the other 19 agents (numpy trainer, in this process) run here over a private
Mosquitto. Measured on the device's process: RSS idle (online, no round yet)
and its peak while training (``VmHWM`` reset in between), the training seconds
it reports in each update, or the reason it declined; per round: accuracy and
wall time. Under qemu-user the process's memory includes the emulator's own
(its code cache): an upper bound for the device, labelled as emulated.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import Action, RoundClosed, RoundConfig
from edge_agent.mqtt import run_fleet
from fedmq.broker import LocalBroker
from fedmq.launch import AgentSettings, Connection, build_agent, build_coordinator
from fedmq.tasks import DataConfig, get_task
from fedmq_tools.bench.footprint import OnlineWatch, reset_peak
from fedmq_tools.bench.measure import Usage, stop_all, usage
from fedmq_tools.bench.w1 import ONE_THREAD_ENV
from protocol import Phase, Topics, WireError, decode_update
from transport.connection import BrokerURL

DEVICE_AGENT = "agent-0"
#: how long the device's agent gets to come online (an emulated start is slow)
ONLINE_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class DeviceRun:
    """One run with the device's agent as shard 0 of ``agents``."""

    #: the command that runs ``fedmq`` on the device, e.g. ``chroot ROOT /opt/fedmq/bin/fedmq``
    prefix: tuple[str, ...]
    job: str
    task: str = "mnist-2nn"
    trainer: str = "numpy"
    #: the fleet: the device plus ``agents - 1`` numpy agents in this process
    agents: int = 20
    #: the data is cut into this many shards (W1: 20 of 500 rows); the device holds shard 0
    shards: int = 20
    rounds: int = 20
    evaluate: bool = True
    deadline_s: float = 600.0
    #: the MNIST directory as the device sees it, and as this host sees it
    agent_data: str | None = None
    data_dir: Path | None = None
    extra_flags: tuple[str, ...] = field(default=())

    def command(self, url: str) -> list[str]:
        cmd = [*self.prefix, "--log-level", "INFO", "agent", "--broker", url, "--job", self.job,
               "--task", self.task, "--shard", f"0/{self.shards}", "--agent-id", DEVICE_AGENT,
               "--trainer", self.trainer, "--threads", "1", *self.extra_flags]
        return cmd + (["--data", self.agent_data] if self.agent_data else [])


class UpdateLog:
    """What one agent publishes on its update topic: per round, train seconds or a decline."""

    def __init__(self, url: str, job: str, agent: str) -> None:
        self.rounds: dict[int, dict[str, Any]] = {}
        broker, topic = BrokerURL.parse(url), Topics(job).update(agent)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            update = decode_update(bytes(msg.payload))
        except WireError as exc:
            self.rounds.setdefault(-1, {"rejected": str(exc)})
            return
        row = {"declined": update.declined} if update.declined else {
            "train_s": round(update.train_s, 3), "bytes": len(msg.payload)}
        self.rounds.setdefault(update.round, row)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _wait_online(proc: subprocess.Popen[bytes], online: OnlineWatch) -> bool:
    """Whether the agent came online; False if it exited first (a bench loop, not a test)."""
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    while not online.event.wait(0.5):
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError(f"the device's agent was not online in {ONLINE_TIMEOUT_S} s")
    return True


def _fleet(run: DeviceRun, url: str) -> list[Any]:
    """The other agents of the run, in this process (numpy trainer, W1 shards 1..n-1)."""
    nodes = [
        build_agent(
            AgentSettings(job=run.job, task=run.task, agent_id=f"agent-{k}", shard=k,
                          num_shards=run.shards, data=DataConfig(data_dir=run.data_dir),
                          trainer="numpy", exit_when_done=True),
            Connection(BrokerURL.parse(url)),
        )
        for k in range(1, run.agents)
    ]
    run_fleet(nodes)
    return nodes


def _usage_row(u: Usage) -> dict[str, int]:
    return {"rss": u.rss, "rss_anon": u.rss_anon, "rss_file": u.rss_file, "peak_rss": u.peak_rss}


def run_device(run: DeviceRun, url: str, log_path: Path) -> dict[str, Any]:
    """The run, the device's agent measured; never raises for a device that cannot train."""
    online = OnlineWatch(url, run.job, DEVICE_AGENT)
    updates = UpdateLog(url, run.job, DEVICE_AGENT)
    closed: list[dict[str, Any]] = []

    def on_action(action: Action) -> None:
        if isinstance(action, RoundClosed):
            m = action.metrics
            closed.append({"round": m.round, "accuracy": m.accuracy, "accepted": m.accepted,
                           "declined": m.declined, "closed_by": m.closed_by.value,
                           "duration_s": round(m.duration_s, 3)})

    doc: dict[str, Any] = {"command": shlex.join(run.command("URL")), "log": str(log_path)}
    started = time.monotonic()
    with log_path.open("wb") as log:
        # this machine's environment, as fedmq bench footprint's agents have it (its
        # OPENBLAS_* settings change numpy's buffers); a chroot prefix sets its own
        proc = subprocess.Popen(run.command(url), stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **ONE_THREAD_ENV})
    try:
        if not _wait_online(proc, online):
            doc.update(started=False, exit_code=proc.returncode, log_tail=_tail(log_path))
            return doc
        doc["online_s"] = round(time.monotonic() - started, 2)
        doc["idle"] = _usage_row(usage(proc.pid))
        peak_reset = reset_peak(proc.pid)
        others = _fleet(run, url) if run.agents > 1 else []
        task = get_task(run.task)
        config = RoundConfig(job=run.job, task=run.task, rounds=run.rounds, plan=task.plan,
                             min_agents=run.agents, min_replies=run.agents,
                             deadline_s=run.deadline_s, evaluate=run.evaluate,
                             on_short_round="stop")
        node = build_coordinator(config, Connection(BrokerURL.parse(url)),
                                 data=DataConfig(data_dir=run.data_dir), run_dir=None,
                                 on_action=on_action)
        phase = node.run()
        alive = proc.poll() is None
        trained = usage(proc.pid) if alive else None
        doc.update(
            started=True, phase=phase.value, message=node.rounds.message,
            completed=phase is Phase.DONE, alive_at_end=alive,
            peak_rss_training=trained.peak_rss if trained and peak_reset else None,
            after=_usage_row(trained) if trained else None,
            rounds=[{**row, **updates.rounds.get(row["round"], {})} for row in closed],
            device_updates=dict(sorted(updates.rounds.items())),
            fleet=len(others) + 1,
        )
        for other in others:
            other.stop()
    finally:
        online.close()
        updates.close()
        [(_, code)] = stop_all([proc])
        doc["exit_code"] = code
        doc.setdefault("log_tail", _tail(log_path) if code not in (0, -15) else "")
    return doc


def _tail(path: Path, lines: int = 5) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_emulated(prefix: Sequence[str], agent_data: str | None, data_dir: Path | None,
                 logs: Path) -> dict[str, Any]:
    """W1 (20 agents, 20 rounds, mnist-2nn) with agent-0 behind ``prefix``."""
    run = DeviceRun(prefix=tuple(prefix), job="pi-w1", agent_data=agent_data, data_dir=data_dir)
    logs.mkdir(parents=True, exist_ok=True)
    with LocalBroker() as broker:
        return run_device(run, broker.url, logs / "device-agent.log")


def report(doc: dict[str, Any]) -> str:
    """One line per round, then the device's memory and times."""
    run = doc["run"]
    mb = 1024 * 1024
    lines = [f"device: {doc.get('label', '')}", f"command: {run['command']}"]
    if not run.get("started"):
        return "\n".join([*lines, f"did not start: exit {run['exit_code']}: {run['log_tail']}"])
    for row in run["rounds"]:
        acc = f"{row['accuracy']:.4f}" if row.get("accuracy") is not None else "-"
        dev = (f"train {row['train_s']:.2f} s" if "train_s" in row
               else f"declined: {row.get('declined', '?')}")
        lines.append(
            f"round {row['round']:>3}  acc {acc}  {row['duration_s']:.2f} s  agent-0 {dev}"
        )
    trains = [r["train_s"] for r in run["rounds"] if "train_s" in r]
    if trains:
        lines.append(f"agent-0 training: median {sorted(trains)[len(trains) // 2]:.2f} s a round")
    peak = run.get("peak_rss_training")
    lines.append(
        f"agent-0 RSS idle {run['idle']['rss'] / mb:.1f} MB, peak while training "
        + (f"{peak / mb:.1f} MB" if peak else "not measured")
        + f"; online after {run['online_s']} s; {run['phase']}: {run['message']}"
    )
    probe = doc.get("probe")
    if probe:
        sizes = ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in probe["installed_bytes"].items())
        lines.append(f"installed {probe['installed_total'] / 1e6:.1f} MB ({sizes})")
        lines.append(f"import {probe['import_s']['median_s']:.3f} s (median of "
                     f"{probe['import_s']['runs']}, {probe['platform']}, Python {probe['python']})")
    return "\n".join(lines)
