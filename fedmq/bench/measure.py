"""Reading what the kernel knows about a process: peak and current RSS, CPU seconds.

Linux only (``/proc``, ``pidfd_open``, ``wait4``). Peak RSS is the kernel's own
high-water mark (``VmHWM``, or ``ru_maxrss`` for a reaped child), never a
sampled guess. Nothing here imports torch.
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
#: how long a child that ignored its deadline gets after SIGTERM before SIGKILL
_TERM_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class Usage:
    """One process's memory and CPU: bytes and seconds."""

    rss: int
    peak_rss: int
    cpu_s: float


@dataclass(frozen=True, slots=True)
class ExitUsage:
    """A reaped child: its exit code (negative: killed by that signal), peak RSS, CPU."""

    returncode: int
    peak_rss: int
    cpu_s: float
    timed_out: bool


def usage(pid: int | str = "self") -> Usage:
    """Current RSS, peak RSS (``VmHWM``) and user+system CPU seconds of a live process.

    Raises:
        FileNotFoundError: if the process is gone.
    """
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # "12345 kB"
    stat = Path(f"/proc/{pid}/stat").read_text()
    # fields after the parenthesised command name; utime and stime are the 12th and 13th
    after = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(after[11]) + int(after[12])) / _CLOCK_TICKS
    return Usage(rss=fields["VmRSS"], peak_rss=fields["VmHWM"], cpu_s=cpu)


def reset_peak_rss() -> None:
    """Restart this process's ``VmHWM`` from its current RSS (``clear_refs`` value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def loaded(pid: int, library: str) -> bool:
    """Whether a shared object whose path contains ``library`` is mapped into ``pid``."""
    return library in Path(f"/proc/{pid}/maps").read_text()


def reap(proc: subprocess.Popen[bytes], timeout: float) -> ExitUsage:
    """Wait up to ``timeout`` s for ``proc`` to exit (then SIGTERM, then SIGKILL) and
    reap it with ``wait4``, which returns the kernel's peak RSS and CPU time for it.

    ``proc`` must not have been waited for already (its rusage would be lost).
    """
    pidfd = os.pidfd_open(proc.pid)
    timed_out = False
    try:
        if not select.select([pidfd], [], [], max(timeout, 0.0))[0]:
            timed_out = True
            proc.terminate()
            if not select.select([pidfd], [], [], _TERM_GRACE_S)[0]:
                proc.kill()
    finally:
        os.close(pidfd)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ExitUsage(
        returncode=proc.returncode,
        peak_rss=rusage.ru_maxrss * 1024,  # Linux reports KiB
        cpu_s=rusage.ru_utime + rusage.ru_stime,
        timed_out=timed_out,
    )


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
                code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
                self._on_exit(index, code)

    def close(self) -> None:
        """Stop watching and release the descriptors."""
        os.write(self._wake_w, b"x")
        self._thread.join()
        for fd in (*self._fds, self._wake_r, self._wake_w):
            os.close(fd)
