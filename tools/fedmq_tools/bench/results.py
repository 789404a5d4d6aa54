"""Where a benchmark's figures go: the machine, the exact command, and a JSON file.

Every results file records the command line that produced it and the machine
it ran on (CPU, cores, RAM, OS, Python, torch, Mosquitto, load average), so a
figure in BENCHMARKS.md can be traced to its run and rerun. Never imports torch
(versions come from package metadata).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: where results land unless ``--out`` says otherwise (git-ignored)
RESULTS_DIR = Path("bench-results")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _os_name() -> str:
    release = Path("/etc/os-release")
    if release.is_file():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))}, Linux {platform.release()}"
    return f"{platform.system()} {platform.release()}"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def mosquitto_version() -> str | None:
    """``mosquitto -h``'s first line names the version; None when it is not installed."""
    from fedmq.broker import BrokerError, find_mosquitto

    try:
        binary = find_mosquitto()
    except BrokerError:
        return None
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].strip() if first else None


def machine() -> dict[str, Any]:
    """What the figures were measured on, and how busy it was when they started."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": _mem_total_bytes(),
        "os": _os_name(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "paho_mqtt": _version("paho-mqtt"),
        "mosquitto": mosquitto_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def command_line(argv: list[str] | None = None) -> str:
    """The ``fedmq ...`` command as typed (shell-quoted)."""
    return shlex.join(["fedmq", *(sys.argv[1:] if argv is None else argv)])


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def revision() -> str | None:
    """The checkout's commit, ``-dirty`` when it has uncommitted changes; None outside git."""
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root, capture_output=True, text=True, check=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def begin() -> dict[str, Any]:
    """Call before a benchmark runs: the start time, the code's revision and the machine
    (its load, untouched)."""
    return {"started": now_utc(), "revision": revision(), "machine": machine()}


def write_results(path: Path, bench: str, begun: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Write ``figures`` with the command, machine and times as JSON at ``path``."""
    document = {
        "bench": bench,
        "command": command_line(),
        **begun,
        "finished": now_utc(),
        "load_average_at_finish": [round(x, 2) for x in os.getloadavg()],
        **figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
