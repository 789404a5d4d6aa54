"""Reading what the kernel knows about a process: peak and current RSS, CPU seconds.

Linux only (``/proc``, ``pidfd_open``, ``waitid``). Peak RSS is the kernel's own
high-water mark, ``VmHWM``, read while the process lives. Not ``ru_maxrss``
from ``wait4``: on exec, Linux folds the old address space's high-water mark
into it, and a child spawned by ``subprocess`` (vfork) starts in its parent's,
so a small agent spawned by a 300 MB benchmark would report 300 MB. Hence
children are measured alive, then stopped (:func:`stop_all`). ``VmHWM`` is
``max(hiwater, current RSS)`` with the kernel updating ``hiwater`` lazily, so a
later read can be a few pages lower than an earlier one: callers that read it
more than once keep the largest value they saw. Nothing here imports torch.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: how long a child gets to exit after SIGTERM before SIGKILL
TERM_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class Usage:
    """One process's memory and CPU: bytes and seconds.

    ``rss_file`` is the part of ``rss`` backed by files (shared libraries,
    mostly), which other processes mapping the same files share; ``rss_anon``
    is the process's own.
    """

    rss: int
    peak_rss: int
    cpu_s: float
    rss_anon: int = 0
    rss_file: int = 0


def usage(pid: int | str = "self") -> Usage:
    """Current RSS, peak RSS (``VmHWM``) and user+system CPU seconds of a live process.

    Raises:
        FileNotFoundError: if the process is gone.
        KeyError: if it is a zombie (it has no memory left to measure).
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024  # "12345 kB"
    stat = Path(f"/proc/{pid}/stat").read_text()
    # the fields after the parenthesised command name; utime and stime are the 12th and 13th
    after = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(after[11]) + int(after[12])) / _CLOCK_TICKS
    return Usage(
        rss=fields["VmRSS"],
        peak_rss=fields["VmHWM"],
        cpu_s=cpu,
        rss_anon=fields.get("RssAnon", 0),
        rss_file=fields.get("RssFile", 0),
    )


def system_cpu_s() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores, ``/proc/stat``).

    The difference over a window, minus what a benchmark's own processes used in
    it, is the CPU other work took meanwhile: how disturbed the measurement was.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def cpu_s(pids: list[int | str]) -> float:
    """Total CPU seconds of the live processes among ``pids``."""
    total = 0.0
    for pid in pids:
        try:
            total += usage(pid).cpu_s
        except (FileNotFoundError, KeyError):
            continue  # gone: the window's figure only counts what it can see
    return total


def reset_peak_rss() -> None:
    """Restart this process's ``VmHWM`` from its current RSS (``clear_refs`` value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def loaded(pid: int, library: str) -> bool:
    """Whether a file whose path contains ``library`` is mapped into ``pid``."""
    return library in Path(f"/proc/{pid}/maps").read_text()


def stop_all(
    procs: list[subprocess.Popen[bytes]], timeout: float = TERM_GRACE_S
) -> list[tuple[Usage | None, int]]:
    """Measure each child (None if it already exited), SIGTERM them all, and reap them
    (SIGKILL after ``timeout`` s). Returns (usage, exit code) per child, in order."""
    measured: list[Usage | None] = []
    for proc in procs:
        try:
            measured.append(usage(proc.pid) if proc.poll() is None else None)
        except (FileNotFoundError, KeyError):
            measured.append(None)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return list(zip(measured, codes, strict=True))


class ExitWatcher:
    """Calls ``on_exit(index, returncode)`` from a thread when a child exits, without
    reaping it (``waitid`` with ``WNOWAIT``), so :func:`reap` still gets its rusage.

    Lets a benchmark stop a run at once when a child it depends on dies early,
    instead of waiting for the run's timeout.
    """

    def __init__(
        self, procs: list[subprocess.Popen[bytes]], on_exit: Callable[[int, int], None]
    ) -> None:
        self._fds = {os.pidfd_open(p.pid): i for i, p in enumerate(procs)}
        self._pids = [p.pid for p in procs]
        self._on_exit = on_exit
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="exit-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        pending = dict(self._fds)
        while pending:
            ready = select.select([*pending, self._wake_r], [], [])[0]
            if self._wake_r in ready:
                return
            for fd in ready:
                index = pending.pop(fd)
                info = os.waitid(os.P_PID, self._pids[index], os.WEXITED | os.WNOWAIT)
                assert info is not None  # the pidfd said it exited; only WNOHANG returns None
                code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
                self._on_exit(index, code)

    def close(self) -> None:
        """Stop watching and release the descriptors."""
        os.write(self._wake_w, b"x")
        self._thread.join()
        for fd in (*self._fds, self._wake_r, self._wake_w):
            os.close(fd)
