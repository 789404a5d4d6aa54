"""Headless Chromium as a host of browser agents, for ``fedmq demo --browser-agents N``.

One Debian ``chromium`` process in headless mode with a fresh profile; each agent
is one tab, opened through the DevTools HTTP endpoint on loopback
(``PUT /json/new?URL``: headless mode takes a single URL on its command line).
Background-tab throttling is off, so every tab keeps its MQTT keepalive and its
training at full speed. Stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

#: no sandbox (containers, root), no GPU, nothing fetched behind our back, no throttling
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)
INSTALL_HINT = "Chromium is not installed. On Debian/Ubuntu: sudo apt-get install -y chromium"
_NAMES = ("chromium", "chromium-browser")


class ChromiumError(RuntimeError):
    """Chromium could not be started or driven."""


def find_chromium() -> str:
    """Path of the chromium binary.

    Raises:
        ChromiumError: with install instructions when it is missing.
    """
    for name in _NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    raise ChromiumError(INSTALL_HINT)


class HeadlessChromium:
    """A headless Chromium with one tab per :meth:`open`; use as a context manager."""

    def __init__(self, log: Path | None = None, start_timeout_s: float = 30.0) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="fedmq-chromium-"))
        self._log = log
        self._timeout = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self._endpoint = ""

    @property
    def endpoint(self) -> str:
        """The DevTools HTTP endpoint on loopback (``/json/list`` names every tab)."""
        return self._endpoint

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> HeadlessChromium:
        out = self._log.open("ab") if self._log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [find_chromium(), *FLAGS, "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={self._profile}", "about:blank"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        active = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self._timeout
        while not active.is_file() or not active.read_text().strip():
            if self.process.poll() is not None:
                raise ChromiumError(f"chromium exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise ChromiumError(f"chromium did not start in {self._timeout} s")
            time.sleep(0.05)  # polling a file Chromium writes once it listens
        port = active.read_text().split()[0]
        self._endpoint = f"http://127.0.0.1:{port}"
        return self

    def open(self, url: str) -> None:
        """A new tab on ``url``.

        Raises:
            ChromiumError: when the DevTools endpoint refuses.
        """
        request = urllib.request.Request(f"{self._endpoint}/json/new?{quote(url, safe='')}",
                                         method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                reply.read()
        except OSError as exc:
            raise ChromiumError(f"cannot open a tab: {exc}") from exc

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers; the profile is removed."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> HeadlessChromium:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
