"""What an installed fedmq costs where it is installed: disk per distribution, import time.

Invariant: standard library only, and no import of fedmq or fedmq_tools at module
level, because ``scripts/pi-check.sh`` runs this file by path with the Python of
an emulated Raspberry Pi root, where only ``fedmq[agent]`` is installed. Run
that way it prints one JSON document (``python3 probe.py [EXTRA]``).

Disk is read from each distribution's RECORD (what pip installed, byte for
byte), so a wheel's tests, headers and bundled libraries count as they land on
the device; pip and setuptools, which every venv has, are not fedmq's cost.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

#: what ``fedmq agent --trainer numpy`` imports before it runs (fedmq/agent_cli.py)
AGENT_IMPORTS = "fedmq.agent_cli, fedmq.launch, edge_agent.numpy_trainer"
IMPORT_RUNS = 3
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement.strip())
    if match is None:
        raise ValueError(f"cannot read requirement {requirement!r}")
    return match.group(0)


def _applies(requirement: str, extras: frozenset[str]) -> bool:
    """Whether a ``Requires-Dist`` line applies on this interpreter with these extras."""
    if ";" not in requirement:
        return True
    marker = requirement.split(";", 1)[1]
    wanted = set(re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker))
    if wanted:
        return bool(wanted & extras)
    version = re.search(r"python_version\s*(<|>=)\s*['\"]([\d.]+)['\"]", marker)
    if version is None:
        return False  # a marker this reader does not evaluate: counted as absent
    have = sys.version_info[:2]
    bound = tuple(int(p) for p in version.group(2).split("."))
    return have < bound if version.group(1) == "<" else have >= bound


def closure(root: str, extras: frozenset[str] = frozenset()) -> list[str]:
    """``root`` and every installed distribution it requires here, ``extras`` applied at the
    root only (as ``pip install root[extras]`` resolves)."""
    seen: dict[str, str] = {}
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed: nothing of it is on disk
        seen[key] = metadata.distribution(name).metadata["Name"]
        todo += [(requirement_name(r), frozenset()) for r in requires if _applies(r, wanted)]
    return sorted(seen.values(), key=str.lower)


def distribution_bytes(name: str) -> int:
    """Bytes on disk of what ``name``'s RECORD lists (an editable install lists no source)."""
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or ():
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def breakdown(name: str) -> dict[str, int]:
    """Where ``name``'s bytes go: compiled bytecode (``.pyc``, written by pip at install),
    test suites (files under a ``tests`` directory), native libraries (``.so``)."""
    dist = metadata.distribution(name)
    parts = {"bytecode": 0, "tests": 0, "native": 0}
    for file in dist.files or ():
        path = Path(str(dist.locate_file(file)))
        if not path.is_file():
            continue
        size = path.stat().st_size
        if path.suffix == ".pyc":
            parts["bytecode"] += size
        elif "tests" in file.parts:
            parts["tests"] += size
        elif ".so" in path.suffixes:
            parts["native"] += size
    return parts


def installed(root: str = "fedmq", extras: frozenset[str] = frozenset({"agent"})) -> dict[str, int]:
    """Bytes per distribution of ``root[extras]`` and what it pulls in, as installed here."""
    return {name: distribution_bytes(name) for name in closure(root, extras)}


def import_seconds(modules: str = AGENT_IMPORTS, runs: int = IMPORT_RUNS) -> dict[str, float]:
    """Median, min and max of importing ``modules`` in ``runs`` fresh interpreters."""
    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    times = [
        float(subprocess.run([sys.executable, "-c", code], env={**os.environ, **_ONE_THREAD},
                             capture_output=True, text=True, check=True).stdout)
        for _ in range(runs)
    ]
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "runs": runs}


def main(argv: list[str]) -> int:
    # EXTRA: comma-separated extras of fedmq ("-": none); default: agent
    extras = frozenset(e for e in argv[1].split(",") if e != "-") if len(argv) > 1 else (
        frozenset({"agent"}))
    sizes = installed("fedmq", extras)
    doc = {
        "python": sys.version.split()[0],
        "platform": sysconfig.get_platform(),
        "versions": {name: metadata.version(name) for name in sizes},
        "installed_bytes": sizes,
        "installed_total": sum(sizes.values()),
        "breakdown": {name: breakdown(name) for name in sizes},
        "import_s": import_seconds(),
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
