"""``fedmq demo --web`` and ``--browser-agents N``: the demo's broker, pages and browsers.

What it adds to the demo (:mod:`fedmq.demo` calls it at a few points):

- the broker's WebSockets listener with a generated demo credential: one user,
  ``web``, whose password travels in the page links; its ACL lets it read the
  job's topics and publish agents' updates and presence, never the coordinator's
  topics (Mosquitto binds that listener to every interface: docs/WEB.md says what
  that exposes);
- ``fedmq web``'s server for the two pages and the demo shards, on every
  interface with ``--web`` (a phone on the LAN opens it), else on loopback;
- the dashboard and agent links, and a QR code of the agent link;
- N browser agents, each a tab of one headless Chromium, on the shards after the
  Python agents' (shard ``agents + i`` of ``agents + N``);
- the summary's count of accepted updates by agent kind, read from the agents'
  retained presence (``kind``: python or browser).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from coordinator import Action, UpdateAccepted
from fedmq.broker import LocalBroker
from fedmq.tasks import DataConfig
from fedmq.web.chromium import HeadlessChromium
from fedmq.web.cli import parse_listen
from fedmq.web.links import host_port, lan_address, page_url, qr_text
from fedmq.web.server import WebConfig, WebServer
from fedmq.web.shard import ShardSource
from protocol import Topics, WireError, decode_presence
from transport.connection import BrokerURL, Session, connect, make_client

#: the demo's one WebSockets user
WEB_USER = "web"
#: agent ids of the demo's headless browser agents
BROWSER_PREFIX = "browser-"


def demo_acl(job: str) -> str:
    """The WebSockets listener's ACL: read the job; write agents' updates and presence only
    (never a model, a status or metrics: the coordinator's topics stay the coordinator's)."""
    return (
        "# fedmq demo --web: the WebSockets listener's one user (docs/WEB.md)\n"
        f"user {WEB_USER}\n"
        f"topic read fedmq/v1/{job}/#\n"
        f"topic write fedmq/v1/{job}/update/+\n"
        f"topic write fedmq/v1/{job}/agents/+\n"
    )


def web_listener_files(where: Path, job: str, password: str) -> str:
    """Write the WebSockets listener's password and ACL files into ``where``; returns the
    lines that hand them to that listener (:class:`LocalBroker`'s ``ws_extra``)."""
    from fedmq.credentials import mosquitto_hash

    (where / "passwd").write_text(f"{WEB_USER}:{mosquitto_hash(password)}\n")
    (where / "acl").write_text(demo_acl(job))
    _readable_by_mosquitto(where)
    return f"password_file {where / 'passwd'}\nacl_file {where / 'acl'}\n"


class KindCounter:
    """Accepted updates by agent kind, the kinds read from retained presence.

    An observer of the coordinator's actions (``on_action``) beside a plain
    subscriber to ``agents/+``.
    """

    def __init__(self, broker_url: str, job: str) -> None:
        self._broker = BrokerURL.parse(broker_url)
        self._session = Session(f"fedmq-demo-kinds-{job}")
        self._topics = Topics(job)
        self._lock = threading.Lock()
        self.kind_of: dict[str, str] = {}
        self.updates: Counter[str] = Counter()
        self._client = make_client(self._broker, self._session)
        self._client.on_connect = lambda c, *_: c.subscribe(self._topics.all_presence, qos=1)
        self._client.on_message = self._on_presence

    def start(self) -> KindCounter:
        connect(self._client, self._broker, self._session)
        return self

    def _on_presence(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            presence = decode_presence(bytes(message.payload))
        except WireError:
            return  # the coordinator counts and logs bad presence; this one names no kind
        with self._lock:
            self.kind_of[presence.agent] = presence.kind or "unknown"

    def __call__(self, action: Action) -> None:
        if isinstance(action, UpdateAccepted):
            with self._lock:
                self.updates[self.kind_of.get(action.agent, "unknown")] += 1

    def by_kind(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.updates.items()))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class WebDemo:
    """The demo's web side, from ``--web``, ``--web-listen`` and ``--browser-agents``."""

    def __init__(self, args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
        from fedmq.credentials import new_password

        if args.broker:
            raise ValueError("--web and --browser-agents start their own broker: drop --broker, "
                             "or serve the pages for your broker with `fedmq web`")
        if args.browser_agents < 0:
            raise ValueError("--browser-agents must be >= 0")
        self.browser_agents: int = args.browser_agents
        self.lan: bool = args.web
        self._args = args
        self._out = out
        self.password = new_password()
        self._dir = Path(tempfile.mkdtemp(prefix="fedmq-web-demo-"))
        self._ws_extra = web_listener_files(self._dir, args.job, self.password)
        self.server: WebServer | None = None
        self.chromium: HeadlessChromium | None = None
        self.kinds: KindCounter | None = None
        self.links: dict[str, str] = {}
        self._closing = False

    def broker_options(self) -> dict[str, Any]:
        """What :class:`LocalBroker` needs for the WebSockets listener."""
        return {"websockets": True, "ws_extra": self._ws_extra}

    def observing(self, observe: Callable[[Action], None]) -> Callable[[Action], None]:
        """``observe``, then this demo's count of updates by kind."""

        def both(action: Action) -> None:
            observe(action)
            if self.kinds is not None:
                self.kinds(action)

        return both

    def start(
        self,
        broker: LocalBroker,
        python_agents: int,
        data: DataConfig,
        run_dir: Path,
        stop: Callable[[str], object],
    ) -> None:
        """Serve the pages, print the links (and the QR code), start the browser agents;
        ``stop`` ends the run should Chromium die."""
        args = self._args
        assert broker.ws_port is not None
        listen_host, listen_port = parse_listen(args.web_listen if self.lan else "127.0.0.1:0")
        host = lan_address() if listen_host in ("0.0.0.0", "::") else listen_host
        total = python_agents + self.browser_agents
        source = ShardSource(args.task, data, args.partition)
        ws = f"ws://{host_port(host, broker.ws_port)}"
        config = WebConfig(ws, args.job, args.task, source)
        self.server = WebServer(config, listen_host, listen_port)
        self.server.start()
        base = f"http://{host_port(host, self.server.port)}"
        auth = {"broker": ws, "job": args.job, "user": WEB_USER, "pass": self.password}
        self.links = {
            "dashboard": page_url(base, "/", auth),
            "agent": page_url(base, "/agent", {**auth, "shard": f"any/{total}"}),
        }
        self.kinds = KindCounter(broker.url, args.job).start()
        print(f"dashboard: {self.links['dashboard']}", file=self._out)
        print(f"agent:     {self.links['agent']}", file=self._out)
        if self.lan:
            pages = f"{base} (the pages) and " if listen_host in ("0.0.0.0", "::") else ""
            print(f"exposed on the LAN: {pages}{ws} (MQTT over WebSockets): anyone holding a "
                  "link can read this job's topics and train as an agent (docs/WEB.md)",
                  file=self._out)
            try:
                print(qr_text(self.links["agent"]), file=self._out)
            except ImportError:
                print("(pip install segno for a QR code of the agent link)", file=self._out)
        if self.browser_agents:
            local_ws = f"ws://127.0.0.1:{broker.ws_port}"
            local = f"http://127.0.0.1:{self.server.port}"
            self.chromium = HeadlessChromium(log=run_dir / "chromium.log").start()
            for i in range(self.browser_agents):
                self.chromium.open(page_url(local, "/agent", {
                    **auth, "broker": local_ws, "agent": f"{BROWSER_PREFIX}{i}",
                    "shard": f"{python_agents + i}/{total}", "device": "headless",
                }))
            print(f"browser agents: {self.browser_agents} tabs of headless chromium "
                  f"(pid {self.chromium.pid})", file=self._out)
            threading.Thread(target=self._watch, args=(stop,), daemon=True).start()

    def _watch(self, stop: Callable[[str], object]) -> None:
        proc = self.chromium.process if self.chromium is not None else None
        if proc is not None and proc.wait() != 0 and not self._closing:
            stop(f"chromium (the browser agents) exited with code {proc.returncode}")

    def summary(self) -> dict[str, Any]:
        return {"updates_by_kind": self.kinds.by_kind() if self.kinds is not None else {},
                "browser_agents": self.browser_agents, "links": self.links}

    def close(self) -> None:
        self._closing = True
        if self.chromium is not None:
            self.chromium.stop()
        if self.server is not None:
            self.server.stop()
        if self.kinds is not None:
            self.kinds.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _readable_by_mosquitto(where: Path) -> None:
    """As root, Mosquitto reads its password and ACL files as the ``mosquitto`` user."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for path in (where, *where.iterdir()):
        os.chown(path, user.pw_uid, user.pw_gid)
