"""A private Mosquitto for the demo, the tests and the benchmarks.

It is started from the project's ``mosquitto.conf`` with the listener moved to a
free loopback port, and stopped by its PID. Nothing here is used when the user
points fedmq at their own broker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

REPO_CONF = Path(__file__).resolve().parent.parent / "mosquitto.conf"

INSTALL_HINT = (
    "Mosquitto is not installed. On Debian/Ubuntu: sudo apt-get install -y mosquitto "
    "mosquitto-clients (on macOS: brew install mosquitto), or pass --broker URL to use "
    "a broker you already run."
)

_LISTENER = re.compile(r"^\s*listener\s+\d+")
_WEBSOCKETS = re.compile(r"^\s*protocol\s+websockets\s*$")


class BrokerError(RuntimeError):
    """The private broker could not be started."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary.

    Raises:
        BrokerError: with install instructions when it is missing.
    """
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise BrokerError(INSTALL_HINT)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def derive_config(
    template: str, port: int, extra: str = "", ws_port: int | None = None, ws_extra: str = ""
) -> str:
    """The template with its listeners moved, plus ``extra`` at the end.

    A listener block runs from its ``listener`` line to the next blank line. Each
    MQTT listener moves to ``port`` on loopback. A ``protocol websockets`` block
    moves to ``ws_port`` (Mosquitto 2.0 binds it to every interface whatever the
    address) and gets ``ws_extra`` at its end; without ``ws_port`` it is left out.
    """
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        if not any(_WEBSOCKETS.match(line) for line in block):
            out.extend([f"listener {port} 127.0.0.1", *block[1:]])
        elif ws_port is not None:
            out.extend([f"listener {ws_port}", *block[1:], *ws_extra.splitlines()])
        block.clear()

    for line in template.splitlines():
        if _LISTENER.match(line):
            flush()
            block.append(line)
        elif block and line.strip():
            block.append(line)
        else:
            flush()
            out.append(line)
    flush()
    return "\n".join(out) + "\n" + extra


def site_bridge(site: str, central: str, job: str) -> str:
    """Mosquitto config lines bridging a site broker to the central broker at ``central``
    (``host:port``) for ``job`` (docs/SCALE.md): models, their deltas, status and the roll
    call down (retained ones kept as published between Mosquittos), presence up; updates
    stay at the site, where the site aggregator sums them, and its partials go to the
    central broker on their own session."""
    base = f"fedmq/v1/{job}"
    return "\n".join([
        f"connection {site}",
        f"address {central}",
        f"remote_clientid fedmq-bridge-{job}-{site}",
        "cleansession true",
        f"topic {base}/model in 1",
        f"topic {base}/model/chunk/# in 1",
        f"topic {base}/delta in 1",
        f"topic {base}/delta/chunk/# in 1",
        f"topic {base}/status in 1",
        f"topic {base}/rollcall in 1",
        f"topic {base}/agents/# out 1",
        "",
    ])


class LocalBroker:
    """A Mosquitto child process on ``127.0.0.1:port`` (and optionally a websockets
    listener on ``ws_port``); use as a context manager."""

    def __init__(
        self,
        conf: Path | None = None,
        port: int | None = None,
        extra_config: str = "",
        start_timeout_s: float = 10.0,
        *,
        websockets: bool = False,
        ws_extra: str = "",
    ) -> None:
        """``websockets``: also start the config's websockets listener, on ``ws_port``
        (every interface), with ``ws_extra`` (its password and ACL files) appended."""
        self.conf = conf or Path(os.environ.get("FEDMQ_MOSQUITTO_CONF", REPO_CONF))
        if not self.conf.is_file():
            raise BrokerError(f"broker config {self.conf} not found")
        self.port = port or free_port()
        self._extra = extra_config
        self.ws_port = free_port() if websockets else None
        self._ws_extra = ws_extra
        self._timeout = start_timeout_s
        self._dir = Path(tempfile.mkdtemp(prefix="fedmq-broker-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> LocalBroker:
        binary = find_mosquitto()
        config = self._dir / "mosquitto.conf"
        text = derive_config(
            self.conf.read_text(), self.port, self._extra, self.ws_port, self._ws_extra
        )
        config.write_text(text)
        log = (self._dir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self._dir
        )
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {self.log()}")
            try:
                for port in (self.port, self.ws_port):
                    if port is not None:
                        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                            pass
                return
            except OSError:
                time.sleep(0.05)  # polling a port that is still being bound
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.port} in {self._timeout} s")

    def stop(self) -> None:
        """Stop the broker by PID: SIGTERM, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port (retained state is lost unless persisted)."""
        self.stop()
        self.start()

    def log(self) -> str:
        path = self._dir / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
