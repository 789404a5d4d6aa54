"""``fedmq bench footprint``: what an agent costs a device: memory, import time, disk.

- Memory: real agent processes on a private Mosquitto. Each is measured idle
  (its presence is online and no round has been announced) and again after a
  coordinator in this process has run it through a few rounds; its ``VmHWM`` is
  reset in between (``/proc/PID/clear_refs``), so the peak is training's own,
  not start-up's (an MNIST agent peaks while parsing the dataset). Agents are
  what a device runs: ``fedmq agent`` with ``--trainer numpy`` (torch-free) or
  ``--trainer torch --threads 1``; ``fedmq swarm --count 1`` (the simulator's
  numpy agent) is kept for
  comparison with earlier figures. Whether torch is loaded is read from the
  process's memory map, not assumed.
- Import time: seconds to import a set of modules in a fresh interpreter
  (``perf_counter`` around the import statement), the median of several runs.
- Disk: the installed size of the base distribution set (what
  ``pip install fedmq[agent]`` pulls in, read from pyproject.toml and resolved
  through installed metadata), from each distribution's RECORD; fedmq's own
  size is its importable source, since this checkout is an editable install.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import RoundConfig
from fedmq.broker import LocalBroker
from fedmq.launch import Connection, build_coordinator
from fedmq.progress import human_bytes
from fedmq.tasks import DataConfig, get_task
from fedmq_tools.bench.measure import Usage, loaded, stop_all, usage
from fedmq_tools.bench.probe import distribution_bytes, installed
from fedmq_tools.bench.w1 import ONE_THREAD_ENV
from protocol import Phase, Topics, decode_presence
from transport.connection import BrokerURL

REPO = Path(__file__).resolve().parents[3]
#: the packages fedmq's wheel ships (tests, docs and the tools are not shipped)
AGENT_PACKAGES = ("protocol", "transport", "models", "coordinator", "edge_agent", "fedmq")
#: module sets timed by ``import_s``: name -> import statement target
IMPORTS = {
    "agent runtime without torch (edge_agent.mqtt, numpy_trainer, fedmq.tasks)":
        "edge_agent.mqtt, edge_agent.numpy_trainer, fedmq.tasks",
    "fedmq.agent_cli, fedmq.launch (what `fedmq agent` imports before running)":
        "fedmq.agent_cli, fedmq.launch",
    "fedmq.cli (what every other command imports)": "fedmq.cli",
    "torch trainer (edge_agent.torch_trainer, imports torch)": "edge_agent.torch_trainer",
}
IMPORT_RUNS = 5
TRAIN_ROUNDS = 3
#: how long an agent process gets to come online
ONLINE_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class AgentCase:
    """One agent process to measure."""

    name: str
    task: str
    #: ``torch`` or ``numpy``: ``fedmq agent --trainer``; ``swarm``: ``fedmq swarm --count 1``
    runner: str

    def command(self, url: str, job: str, data_dir: Path | None) -> list[str]:
        if self.runner != "swarm":
            cmd = [sys.executable, "-m", "fedmq", "agent", "--broker", url, "--job", job,
                   "--task", self.task, "--shard", "0/20", "--agent-id", "agent-0",
                   "--trainer", self.runner, "--threads", "1"]
        else:
            cmd = [sys.executable, "-m", "fedmq", "swarm", "--broker", url, "--job", job,
                   "--task", self.task, "--count", "1", "--of", "20",
                   "--keep-running"]
        return cmd + (["--data", str(data_dir)] if data_dir is not None else [])


CASES = (
    AgentCase("numpy agent, linreg (synthetic, 100 rows)", "linreg", runner="numpy"),
    AgentCase("numpy agent, mnist-logreg (W1 shard of MNIST)", "mnist-logreg", runner="numpy"),
    AgentCase("numpy agent, mnist-2nn (W1 shard, MLP in numpy)", "mnist-2nn", runner="numpy"),
    AgentCase("torch agent, mnist-2nn (W1 shard, 1 thread)", "mnist-2nn", runner="torch"),
    AgentCase("swarm of 1 (numpy), linreg (synthetic, 100 rows)", "linreg", runner="swarm"),
)


class OnlineWatch:
    """Waits for one agent's retained presence to say online."""

    def __init__(self, url: str, job: str, agent: str) -> None:
        self.event = threading.Event()
        broker, topic = BrokerURL.parse(url), Topics(job).presence(agent)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload and decode_presence(bytes(msg.payload)).online:
            self.event.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _train(url: str, job: str, task_name: str, data_dir: Path | None) -> None:
    """Run ``TRAIN_ROUNDS`` rounds with the one agent, evaluation off."""
    config = RoundConfig(job=job, task=task_name, rounds=TRAIN_ROUNDS,
                         plan=get_task(task_name).plan, min_agents=1, deadline_s=120.0,
                         evaluate=False)
    node = build_coordinator(config, Connection(BrokerURL.parse(url)),
                             data=DataConfig(data_dir=data_dir), run_dir=None)
    if node.run() is not Phase.DONE:
        raise RuntimeError(f"{job}: {node.rounds.message}")


def measure_agent(case: AgentCase, url: str, data_dir: Path | None) -> dict[str, Any]:
    """Idle, then trained: one agent process's memory."""
    job = re.sub(r"[^a-z0-9]+", "-", f"fp-{case.task}-{case.runner}")
    online = OnlineWatch(url, job, "agent-0")
    env = {**os.environ, **ONE_THREAD_ENV}
    proc = subprocess.Popen(case.command(url, job, data_dir), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not online.event.wait(ONLINE_TIMEOUT_S):
            raise TimeoutError(f"{case.name}: not online in {ONLINE_TIMEOUT_S} s")
        idle = usage(proc.pid)
        torch_idle = loaded(proc.pid, "/torch/")
        peak_reset = reset_peak(proc.pid)  # else VmHWM is start-up's peak (parsing MNIST)
        _train(url, job, case.task, data_dir)
        trained = usage(proc.pid)
        torch_trained = loaded(proc.pid, "/torch/")
    finally:
        online.close()
        stop_all([proc])
    return {
        "case": case.name,
        "command": " ".join(case.command("URL", job, data_dir)),
        "idle": _usage_dict(idle),
        "after_training": _usage_dict(trained),
        "peak_rss_while_training": trained.peak_rss if peak_reset else None,
        "peak_rss_since_start": trained.peak_rss,
        "torch_loaded": {"idle": torch_idle, "after_training": torch_trained},
    }


def reset_peak(pid: int) -> bool:
    """Restart ``pid``'s ``VmHWM`` from its current RSS (``clear_refs`` 5); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _usage_dict(u: Usage) -> dict[str, Any]:
    return {"rss": u.rss, "rss_anon": u.rss_anon, "rss_file": u.rss_file,
            "peak_rss": u.peak_rss, "cpu_s": round(u.cpu_s, 2)}


def import_seconds(modules: str, runs: int = IMPORT_RUNS) -> dict[str, float]:
    """Median and spread of importing ``modules`` in ``runs`` fresh interpreters."""
    code = (
        "import time; t = time.perf_counter(); import " + modules + "; "
        "print(time.perf_counter() - t)"
    )
    env = {**os.environ, **ONE_THREAD_ENV}
    times = [
        float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, cwd=REPO).stdout)
        for _ in range(runs)
    ]
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3)}


def _source_size() -> int:
    return sum(
        path.stat().st_size
        for package in AGENT_PACKAGES
        for path in (REPO / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def installed_size() -> dict[str, Any]:
    """Bytes on disk of the agent's install without torch, per distribution."""
    dists = installed("fedmq", frozenset({"agent"}))
    dists.pop("fedmq", None)  # an editable install: its RECORD lists no source
    own = _source_size()
    optional = {}
    with contextlib.suppress(metadata.PackageNotFoundError):
        optional["torch"] = distribution_bytes("torch")  # for contrast: the torch trainer
    return {"distributions": dists, "fedmq_source": own, "total": own + sum(dists.values()),
            "optional": optional}


def run_footprint(data_dir: Path | None = None) -> dict[str, Any]:
    """Agents' memory, import times and install size."""
    with LocalBroker() as broker:
        agents = [measure_agent(case, broker.url, data_dir) for case in CASES]
    imports = {name: import_seconds(modules) for name, modules in IMPORTS.items()}
    return {"agents": agents, "import_s": imports, "installed_bytes": installed_size()}


def _maybe_bytes(n: int | None) -> str:
    return "not measured (clear_refs refused)" if n is None else human_bytes(n)


def report(doc: dict[str, Any]) -> str:
    lines = []
    for a in doc["agents"]:
        lines.append(
            f"{a['case']}: idle RSS {human_bytes(a['idle']['rss'])} (anon "
            f"{human_bytes(a['idle']['rss_anon'])}, file {human_bytes(a['idle']['rss_file'])}; "
            f"peak at start-up {human_bytes(a['idle']['peak_rss'])}), peak while training "
            f"{_maybe_bytes(a['peak_rss_while_training'])}, torch loaded: "
            f"{a['torch_loaded']['after_training']}"
        )
    for name, t in doc["import_s"].items():
        lines.append(f"import {name}: {t['median_s']:.3f} s (median of {IMPORT_RUNS})")
    size = doc["installed_bytes"]
    parts = ", ".join(f"{n} {human_bytes(b)}" for n, b in size["distributions"].items())
    lines.append(
        f"installed, agent without torch: {human_bytes(size['total'])} ({parts}, fedmq "
        f"source {human_bytes(size['fedmq_source'])})"
    )
    return "\n".join(lines)
