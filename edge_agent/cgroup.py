"""The memory limit this process lives under: its cgroup's (v1 or v2), not the machine's.

A device's agent usually runs with a memory limit that ``/proc/meminfo`` does not
show: systemd's ``MemoryMax=``, a container's, a Pi's tight unit. Past that
limit the kernel's OOM killer ends the process mid-round, so the resource policy
must compare a round's need with what the cgroup has left, not with the host's
``MemAvailable``.

The parsing is pure (file texts in, values out); :func:`read_cgroup_memory` is the
thin reader. Headroom at each level from this process's cgroup up to its
hierarchy's root is the level's limit minus its usage less the inactive file cache
(reclaimable, as the kernel counts a working set); the tightest level binds.

Invariant: standard library only; anything unreadable means "no limit known"
(``None``), never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: limits at or above this are "no limit" (v1 reports PAGE_COUNTER_MAX, about 2**63)
UNLIMITED = 1 << 60


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    """The binding memory limit over this process and how much of it is left."""

    limit_bytes: int
    headroom_bytes: int


@dataclass(frozen=True, slots=True)
class MemoryHierarchy:
    """Where this process's memory cgroup is: its directory and its hierarchy's mount."""

    version: int
    directory: PurePosixPath
    mount: PurePosixPath


def find_hierarchy(self_cgroup: str, mountinfo: str) -> MemoryHierarchy | None:
    """From ``/proc/self/cgroup`` and ``/proc/self/mountinfo``: the v1 ``memory``
    hierarchy if mounted, else the v2 one if it has the memory controller (the
    caller checks ``cgroup.controllers``); ``None`` if neither is mounted."""
    paths: dict[str, str] = {}
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for name in parts[1].split(",") if parts[1] else [""]:
                paths[name] = parts[2]
    mounts: dict[str, tuple[str, str]] = {}  # "memory" (v1) or "" (v2) -> (root, mount point)
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        if fstype == "cgroup" and "memory" in options.split(","):
            mounts.setdefault("memory", (fields[3], fields[4]))
        elif fstype == "cgroup2":
            mounts.setdefault("", (fields[3], fields[4]))
    for key, version in (("memory", 1), ("", 2)):
        if key in mounts and key in paths:
            root, point = mounts[key]
            relative = PurePosixPath(paths[key]).relative_to("/")
            if root != "/":  # a namespaced mount shows only its own subtree
                try:
                    relative = relative.relative_to(PurePosixPath(root).relative_to("/"))
                except ValueError:
                    continue
            mount = PurePosixPath(point)
            return MemoryHierarchy(version, mount / relative, mount)
    return None


def parse_limit(text: str) -> int | None:
    """``memory.max`` (v2: ``max`` or bytes) or ``memory.limit_in_bytes`` (v1); None: none."""
    value = text.strip()
    if not value or value == "max":
        return None
    limit = int(value)
    return None if limit >= UNLIMITED else limit


def inactive_file(stat: str, version: int) -> int:
    """The reclaimable file cache in a ``memory.stat`` (``inactive_file`` or v1's total_)."""
    key = "inactive_file" if version == 2 else "total_inactive_file"
    for line in stat.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def headroom(limit: int, usage: int, reclaimable: int) -> int:
    return max(0, limit - max(0, usage - reclaimable))


def read_cgroup_memory(proc: Path = Path("/proc")) -> CgroupMemory | None:
    """The tightest limit from this process's memory cgroup up, with its headroom."""
    try:
        where = find_hierarchy((proc / "self/cgroup").read_text(),
                               (proc / "self/mountinfo").read_text())
        if where is None:
            return None
        if where.version == 2:
            controllers = Path(where.mount, "cgroup.controllers").read_text().split()
            if "memory" not in controllers:
                return None
        names = (("memory.max", "memory.current") if where.version == 2
                 else ("memory.limit_in_bytes", "memory.usage_in_bytes"))
        best: CgroupMemory | None = None
        level = where.directory
        while True:
            found = _level(Path(level), names, where.version)
            if found is not None and (best is None or found.headroom_bytes < best.headroom_bytes):
                best = found
            if level in (where.mount, level.parent):
                return best
            level = level.parent
    except (OSError, ValueError):
        return None


def _level(path: Path, names: tuple[str, str], version: int) -> CgroupMemory | None:
    limit_file = path / names[0]
    if not limit_file.exists():  # v2's root has no memory.max
        return None
    limit = parse_limit(limit_file.read_text())
    if limit is None:
        return None
    usage = int((path / names[1]).read_text())
    return CgroupMemory(limit, headroom(limit, usage, inactive_file(
        (path / "memory.stat").read_text(), version)))
