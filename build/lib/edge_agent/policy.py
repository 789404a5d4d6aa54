"""When a device may train: time windows, a memory ceiling and floor, and a user's veto hook.

A round the policy vetoes is declined (``Update.declined``), so the coordinator
closes it without waiting for this device. :func:`veto` is pure: the local
time of day and the memory readings are arguments, so every rule is testable
without a clock or a /proc. Reading the clock and memory and running the hook
are the adapter's side (:func:`read_memory`, :func:`run_hook`).

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

#: a hook written ``module:function`` or ``path/to/file.py:function`` is a Python callable
_CALLABLE_HOOK = re.compile(r"^[\w./-]+:[A-Za-z_]\w*$")
_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")
MINUTES_PER_DAY = 24 * 60
MIB = 1024 * 1024


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
    """What the device reports: ``None`` where it cannot tell (no /proc)."""

    available_bytes: int | None
    rss_bytes: int | None


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

    @property
    def checks_memory(self) -> bool:
        return self.max_rss_mb is not None or self.min_available_mb is not None


def veto(policy: ResourcePolicy, minute_of_day: int, memory: Memory) -> str | None:
    """Why this round may not train now, or ``None`` if it may (the hook is not run here)."""
    if policy.windows and not any(w.contains(minute_of_day) for w in policy.windows):
        allowed = ", ".join(str(w) for w in policy.windows)
        return f"outside the training window ({allowed})"
    if policy.max_rss_mb is not None and memory.rss_bytes is not None:
        rss_mb = memory.rss_bytes / MIB
        if rss_mb > policy.max_rss_mb:
            return f"resident memory {rss_mb:.0f} MiB is over the {policy.max_rss_mb:g} MiB ceiling"
    if policy.min_available_mb is not None and memory.available_bytes is not None:
        free_mb = memory.available_bytes / MIB
        if free_mb < policy.min_available_mb:
            return f"only {free_mb:.0f} MiB available, below {policy.min_available_mb:g} MiB"
    return None


def read_memory(proc: Path = Path("/proc")) -> Memory:
    """``MemAvailable`` and this process's ``VmRSS`` from /proc (``None`` where absent)."""

    def field(path: Path, key: str) -> int | None:
        try:
            for line in path.read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
        except (OSError, ValueError, IndexError):
            return None
        return None

    return Memory(field(proc / "meminfo", "MemAvailable"), field(proc / "self/status", "VmRSS"))


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
