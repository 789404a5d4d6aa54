"""When a device may train: time windows, whether the round fits in memory, a memory
ceiling and floor, and a user's veto hook.

A round the policy vetoes is declined (``Update.declined``), so the coordinator
closes it without waiting for this device. :func:`veto` is pure: the local
time of day and the memory readings are arguments, so every rule is testable
without a clock or a /proc. Reading the clock and memory and running the hook
are the adapter's side (:func:`read_memory`, :func:`run_hook`).

A round that would not fit is always declined, whatever the configuration: past
the memory the device has left (its cgroup's limit, systemd's ``MemoryMax=``, or
the machine's ``MemAvailable``) the kernel kills the agent mid-round, which is a
crash, a lost round and, under systemd, a restart loop. The round's need is what
the last trained round took (its peak RSS over its starting RSS), or before any
round has trained, :func:`round_need`'s estimate from the model's size.

Invariants: standard library only (the hook's module is imported when first
used); a hook that fails, hangs past its timeout or cannot be found vetoes the
round rather than crashing the agent.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.cgroup import read_cgroup_memory

#: a hook written ``module:function`` or ``path/to/file.py:function`` is a Python callable
_CALLABLE_HOOK = re.compile(r"^[\w./-]+:[A-Za-z_]\w*$")
_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
MINUTES_PER_DAY = 24 * 60
MIB = 1024 * 1024
#: a first round's memory need, per byte of float32 model: above what the device cases of
#: docs/EDGE.md measured for models that size (torch's CNN: 132 MiB over its 6.3 MiB model)
NEED_PER_MODEL_BYTE = 24
#: ... and at least this much (torch's 2NN took 22 MiB for a 0.76 MiB model)
MIN_ROUND_NEED = 32 * MIB


@dataclass(frozen=True, slots=True)
class Window:
    """Local clock minutes ``[start, end)``; an end before the start wraps past midnight."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Window:
        """``"22:00-06:00"`` (wraps midnight) or ``"09:30-17:00"``.

        Raises:
            ValueError: for another shape, an impossible time, or an empty window.
        """
        match = _WINDOW.match(text.strip())
        if match is None:
            raise ValueError(f"time window {text!r}: want HH:MM-HH:MM, e.g. 22:00-06:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2 != 0):
            raise ValueError(f"time window {text!r}: not a time of day")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end % MINUTES_PER_DAY and end != MINUTES_PER_DAY:
            raise ValueError(f"time window {text!r} is empty")
        return cls(start, end)

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        def hhmm(m: int) -> str:
            return f"{m // 60:02d}:{m % 60:02d}"

        return f"{hhmm(self.start)}-{hhmm(self.end)}"


@dataclass(frozen=True, slots=True)
class Memory:
    """What the device reports: ``None`` where it cannot tell (no /proc).

    ``available_bytes`` is the smaller of the machine's ``MemAvailable`` and what
    this process's cgroup has left under ``limit_bytes`` (None: no cgroup limit).
    """

    available_bytes: int | None
    rss_bytes: int | None
    limit_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ResourcePolicy:
    """What must hold before each round; the default allows every round."""

    #: train only inside one of these (local time); empty: any time
    windows: tuple[Window, ...] = ()
    #: CPU threads the trainer may use (torch's intra-op pool, BLAS); None: the library's
    max_threads: int | None = None
    #: decline while this process's resident memory exceeds this many MiB
    max_rss_mb: float | None = None
    #: decline while the system has less than this many MiB available
    min_available_mb: float | None = None
    #: a command (non-zero exit vetoes) or ``module:function`` (False or a str vetoes)
    hook: str | None = None
    hook_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_threads is not None and self.max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {self.max_threads}")
        for name in ("max_rss_mb", "min_available_mb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.hook_timeout_s <= 0:
            raise ValueError(f"hook_timeout_s must be > 0, got {self.hook_timeout_s}")



def round_need(model_bytes: int, learned: int | None) -> int:
    """The memory a round will take beyond the agent's RSS before it: the last trained
    round's measured growth, else an estimate from the model's float32 size."""
    if learned is not None:
        return learned
    return max(NEED_PER_MODEL_BYTE * model_bytes, MIN_ROUND_NEED)


def veto(
    policy: ResourcePolicy, minute_of_day: int, memory: Memory, need_bytes: int | None = None
) -> str | None:
    """Why this round may not train now, or ``None`` if it may (the hook is not run here).

    ``need_bytes``: what the round will take beyond the current RSS (:func:`round_need`).
    """
    if policy.windows and not any(w.contains(minute_of_day) for w in policy.windows):
        allowed = ", ".join(str(w) for w in policy.windows)
        return f"outside the training window ({allowed})"
    need = need_bytes or 0
    if need and memory.available_bytes is not None and need > memory.available_bytes:
        under = f" under its {memory.limit_bytes / MIB:.0f} MiB limit" if memory.limit_bytes else ""
        return (f"the round needs about {need / MIB:.0f} MiB more memory; the device has "
                f"{memory.available_bytes / MIB:.0f} MiB left{under}")
    if policy.max_rss_mb is not None and memory.rss_bytes is not None:
        rss_mb = memory.rss_bytes / MIB
        if rss_mb > policy.max_rss_mb:
            return f"resident memory {rss_mb:.0f} MiB is over the {policy.max_rss_mb:g} MiB ceiling"
        if (rss_mb + need / MIB) > policy.max_rss_mb:
            return (f"the round would take resident memory from {rss_mb:.0f} to about "
                    f"{rss_mb + need / MIB:.0f} MiB, over the {policy.max_rss_mb:g} MiB ceiling")
    if policy.min_available_mb is not None and memory.available_bytes is not None:
        free_mb = memory.available_bytes / MIB
        if free_mb < policy.min_available_mb:
            return f"only {free_mb:.0f} MiB available, below {policy.min_available_mb:g} MiB"
    return None


def _kb_field(path: Path, key: str) -> int | None:
    """A ``Key:   123 kB`` line of a /proc file, in bytes (None: absent or unreadable)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_memory(proc: Path = Path("/proc")) -> Memory:
    """``MemAvailable`` (capped by the cgroup's headroom) and this process's ``VmRSS``."""
    available = _kb_field(proc / "meminfo", "MemAvailable")
    rss = _kb_field(proc / "self/status", "VmRSS")
    group = read_cgroup_memory(proc)
    if group is None:
        return Memory(available, rss)
    capped = group.headroom_bytes if available is None else min(available, group.headroom_bytes)
    return Memory(capped, rss, group.limit_bytes)


def peak_rss(proc: Path = Path("/proc")) -> int | None:
    """This process's ``VmHWM`` (peak RSS), or None where /proc does not say."""
    return _kb_field(proc / "self/status", "VmHWM")


def reset_peak_rss(proc: Path = Path("/proc")) -> bool:
    """Restart ``VmHWM`` from the current RSS (``clear_refs`` 5); False where refused."""
    try:
        (proc / "self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


HookContext = dict[str, str]


def run_hook(hook: str, context: HookContext, timeout_s: float) -> str | None:
    """Run the user's veto hook; its reason to decline, or ``None`` to train.

    A command gets ``context`` as ``FEDMQ_*`` environment variables (``FEDMQ_JOB``,
    ``FEDMQ_AGENT``, ``FEDMQ_ROUND``); a callable gets it as keyword arguments.
    """
    if _CALLABLE_HOOK.match(hook) and not Path(hook).exists():
        return _run_callable(hook, context)
    env = {**os.environ, **{f"FEDMQ_{k.upper()}": v for k, v in context.items()}}
    try:
        done = subprocess.run(
            shlex.split(hook),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"hook {hook!r} did not finish in {timeout_s:g} s"
    except OSError as exc:
        return f"hook {hook!r} cannot run: {exc}"
    if done.returncode == 0:
        return None
    said = (done.stderr or done.stdout).strip().splitlines()
    return f"hook {hook!r} exited {done.returncode}" + (f": {said[-1]}" if said else "")


def _run_callable(ref: str, context: HookContext) -> str | None:
    try:
        function = _locate(ref)
        verdict = function(**context)
    except Exception as exc:  # user code: a failing hook vetoes, it does not kill the agent
        return f"hook {ref!r} raised {type(exc).__name__}: {exc}"
    if verdict is False:
        return f"hook {ref!r} vetoed the round"
    if isinstance(verdict, str):
        return f"hook {ref!r}: {verdict}"
    return None


@functools.lru_cache(maxsize=8)
def _locate(ref: str) -> Callable[..., object]:
    """``module:function`` or ``file.py:function``, imported once per process."""
    where, name = ref.rsplit(":", 1)
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"fedmq_hook_{Path(where).stem}", where)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {where}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    function = getattr(module, name)
    if not callable(function):
        raise TypeError(f"{ref} is not callable")
    return function  # type: ignore[no-any-return]
