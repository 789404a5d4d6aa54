"""``fedmq web``'s HTTP server: the dashboard and agent pages, their config, demo shards.

The pages talk MQTT over WebSockets straight to the broker; this server only
hands out files. What it serves, and nothing else:

- ``/`` the dashboard, ``/agent`` the browser agent, and the static files both
  load (shipped inside the package under ``fedmq/web/static``: pip users need no
  node);
- ``/config.json``: the broker's WebSockets URL and the job, without credentials
  (those travel in the page URL's fragment, which browsers never send to a server);
- ``/data/shard?shard=I/N``: a demo shard of the one task it was started with
  (:mod:`fedmq.web.shard`);
- ``/tasks/NAME.js``: browser task modules named at start-up (docs/WEB.md).

Invariants: GET and HEAD only; a path resolves inside the static root or it is
404; no module or file is ever chosen by a request beyond those lists.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fedmq.web.shard import ShardSource, parse_shard

log = logging.getLogger("fedmq.web")

STATIC_ROOT = Path(__file__).resolve().parent / "static"
#: the two pages, by request path
PAGES = {"/": "dashboard/index.html", "/agent": "agent/index.html"}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What the pages are told, and what else may be served."""

    #: the broker as a browser reaches it: ``ws://host:port`` or ``wss://host:port``
    broker: str
    job: str
    #: the job's task, the pages' default (a built-in name or a browser task module URL)
    task: str | None = None
    shards: ShardSource | None = None
    #: browser task modules, served at ``/tasks/NAME.js``
    task_modules: dict[str, Path] = field(default_factory=dict)
    static_root: Path = STATIC_ROOT

    def public(self) -> dict[str, object]:
        """``/config.json``: nothing secret."""
        return {
            "broker": self.broker,
            "job": self.job,
            "task": self.task,
            "shards": self.shards is not None,
            "tasks": sorted(f"/tasks/{name}.js" for name in self.task_modules),
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "fedmq-web"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        url = urlsplit(self.path)
        config = self.server.config
        try:
            if url.path == "/config.json":
                data, kind = json.dumps(config.public()).encode(), CONTENT_TYPES[".json"]
            elif url.path == "/data/shard":
                data, kind = self._shard(url.query), "application/octet-stream"
            else:
                path = self._file(url.path)
                data = path.read_bytes()
                kind = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        except LookupError as exc:
            self.send_error(HTTPStatus.NOT_FOUND, str(exc))
            return
        except (ValueError, FileNotFoundError) as exc:
            self.send_error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _file(self, path: str) -> Path:
        """The file for a request path; LookupError when there is none to serve."""
        config = self.server.config
        if path in PAGES:
            return config.static_root / PAGES[path]
        if path.startswith("/tasks/") and path.endswith(".js"):
            module = config.task_modules.get(path.removeprefix("/tasks/").removesuffix(".js"))
            if module is None:
                raise LookupError(f"no browser task {path}")
            return module
        root = config.static_root.resolve()
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            raise LookupError(f"no file {path}")
        return candidate

    def _shard(self, query: str) -> bytes:
        source = self.server.config.shards
        if source is None:
            raise LookupError("this server hands out no demo data (start it with --task)")
        values = parse_qs(query).get("shard")
        if not values:
            raise ValueError("ask for ?shard=I/N")
        return source.encode(*parse_shard(values[0]))

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], config: WebConfig) -> None:
        super().__init__(address, _Handler)
        self.config = config


class WebServer:
    """The HTTP server on its own thread; ``start`` binds, ``stop`` shuts it down."""

    def __init__(
        self,
        config: WebConfig,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        """With ``certfile`` (and ``keyfile``) it serves HTTPS: a page a phone opens by
        address is a secure context only then, which WebCrypto needs (docs/WEB.md)."""
        self._server = _Server((host, port), config)
        self.tls = certfile is not None
        if certfile is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certfile, keyfile)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fedmq-web", daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    def start(self) -> WebServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
