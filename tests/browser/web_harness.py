"""Real headless Chromium for tests/browser, driven through playwright-core from node.

:class:`Browser` runs ``driver.mjs`` (one JSON command a line) with Debian's
``/usr/bin/chromium`` and a fresh profile; waiting is always on a JavaScript
condition in the page with a timeout (playwright polls it), never a sleep.
:func:`web_broker` is a private Mosquitto with the demo's WebSockets listener and
credential, as ``fedmq demo --web`` starts it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedmq.broker import LocalBroker
from fedmq.tasks import DataConfig
from fedmq.web.demo import WEB_USER, web_listener_files
from fedmq.web.links import page_url
from fedmq.web.server import WebConfig, WebServer
from fedmq.web.shard import ShardSource
from tests.needs import WEB_DIR, require_chromium, require_mosquitto, require_node_modules

DRIVER = Path(__file__).resolve().parent / "driver.mjs"
#: where screenshots are kept for CI to show (FEDMQ_TEST_ARTIFACTS overrides)
ARTIFACTS = Path(os.environ.get("FEDMQ_TEST_ARTIFACTS", WEB_DIR.parent / "test-artifacts"))
PASSWORD = "browser-tests-password"
TIMEOUT_S = 90.0


class Browser:
    """One headless Chromium; pages are named, each in the same profile."""

    def __init__(self, args: tuple[str, ...] = ()) -> None:
        chromium = require_chromium()
        web = require_node_modules()
        env = {**os.environ, "FEDMQ_WEB_DIR": str(web), "FEDMQ_CHROMIUM": chromium}
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open while Chromium runs)
            "w+b", prefix="fedmq-driver-", suffix=".log"
        )
        self._proc = subprocess.Popen(
            ["node", str(DRIVER), json.dumps({"args": list(args)})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, text=True,
        )
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._replies.put(json.loads(line))
        self._replies.put({"id": None, "ok": False, "error": "the driver exited"})

    def _call(self, op: str, timeout: float = TIMEOUT_S, **fields: Any) -> Any:
        self._next += 1
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": self._next, "op": op, **fields}) + "\n")
        self._proc.stdin.flush()
        try:
            reply = self._replies.get(timeout=timeout + 10)
        except queue.Empty:
            raise TimeoutError(f"driver gave no answer to {op} in {timeout + 10} s") from None
        if not reply["ok"]:
            raise AssertionError(f"{op} {fields.get('name', '')}: {reply['error']}\n{self.log()}")
        return reply["value"]

    def open(self, name: str, url: str, width: int = 1280, height: int = 800) -> None:
        self._call("open", name=name, url=url, width=width, height=height)

    def wait(self, name: str, js: str, timeout: float = TIMEOUT_S) -> None:
        """Until the expression is truthy in page ``name``."""
        self._call("wait", timeout=timeout, name=name, js=js, timeout_ms=int(timeout * 1000))

    def eval(self, name: str, js: str) -> Any:
        return self._call("eval", name=name, js=js)

    def text(self, name: str, selector: str) -> str:
        js = f"document.querySelector({json.dumps(selector)})?.textContent ?? ''"
        return str(self.eval(name, js))

    def reload(self, name: str) -> None:
        self._call("reload", name=name)

    def screenshot(self, name: str, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call("screenshot", name=name, path=str(path))
        return path

    def close_page(self, name: str) -> None:
        self._call("close", name=name)

    def log(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def quit(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(json.dumps({"id": 0, "op": "quit"}) + "\n")
                self._proc.stdin.flush()
                self._proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._log.close()


@contextmanager
def web_broker(job: str) -> Iterator[LocalBroker]:
    """A private Mosquitto with a WebSockets listener for ``job``'s demo credential."""
    require_mosquitto()
    where = Path(tempfile.mkdtemp(prefix="fedmq-web-test-"))
    try:
        extra = web_listener_files(where, job, PASSWORD)
        with LocalBroker(websockets=True, ws_extra=extra) as broker:
            yield broker
    finally:
        shutil.rmtree(where, ignore_errors=True)


@contextmanager
def pages_server(broker_ws: str, job: str, task: str, data: DataConfig | None = None,
                 modules: dict[str, Path] | None = None) -> Iterator[str]:
    """``fedmq web``'s server on a free loopback port; yields its base URL."""
    source = ShardSource(task, data or DataConfig())
    config = WebConfig(broker_ws, job, task, source, modules or {})
    with WebServer(config, "127.0.0.1", 0) as server:
        yield f"http://127.0.0.1:{server.port}"


def agent_link(base: str, broker: LocalBroker, job: str, agent: str, shard: str,
               **extra: str) -> str:
    return page_url(base, "/agent", {
        "broker": f"ws://127.0.0.1:{broker.ws_port}", "job": job, "user": WEB_USER,
        "pass": PASSWORD, "agent": agent, "shard": shard, **extra,
    })


def dashboard_link(base: str, broker: LocalBroker, job: str) -> str:
    return page_url(base, "/", {"broker": f"ws://127.0.0.1:{broker.ws_port}", "job": job,
                                "user": WEB_USER, "pass": PASSWORD})
