"""``fedmq web``, and the web flags of ``fedmq demo``.

``fedmq web --broker ws[s]://HOST:PORT --job JOB [--listen HOST:PORT]`` serves the
dashboard (``/``) and the browser agent (``/agent``) for a job on a broker you
run, and prints the links that open them; ``--bundle`` prints one device's link
from its provisioned bundle (the secure profile, docs/WEB.md).
"""

from __future__ import annotations

import argparse
import base64
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fedmq.web.links import host_port, lan_address, page_url, qr_text

_PEM_LINES = ("-----BEGIN", "-----END")


def add_demo_options(p: argparse.ArgumentParser) -> None:
    """``fedmq demo``'s browser flags (docs/WEB.md)."""
    g = p.add_argument_group("browsers (docs/WEB.md)")
    g.add_argument("--web", action="store_true",
                   help="serve the dashboard and agent pages to the LAN; print their links "
                        "and a QR code for a phone")
    g.add_argument("--web-listen", default="0.0.0.0:8080", metavar="HOST:PORT",
                   help="with --web: where the pages are served (default 0.0.0.0:8080)")
    g.add_argument("--browser-agents", type=int, default=0, metavar="N",
                   help="also run N agents in headless Chromium (Debian's chromium)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("web", help="serve the live dashboard and the browser agent page")
    p.add_argument("--broker", required=True,
                   help="the broker's WebSockets listener as browsers reach it: "
                        "ws://[user:pass@]host:port or wss://...")
    p.add_argument("--job", required=True)
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="where to serve the pages (default 127.0.0.1:8080; 0.0.0.0:8080 "
                        "for phones on the LAN)")
    p.add_argument("--public-url", metavar="URL",
                   help="the pages' address in printed links (default: from --listen, with "
                        "this machine's LAN address for 0.0.0.0)")
    p.add_argument("--certfile", type=Path, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--keyfile", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--username", help="MQTT user name put in the printed links")
    p.add_argument("--password", help="MQTT password put in the printed links")
    p.add_argument("--password-file", type=Path, help="read that password from this file")
    p.add_argument("--task", help="the job's task: the agent page's default, and the task "
                                  "whose demo shards /data/shard hands out")
    p.add_argument("--shards", type=int, metavar="N",
                   help="the agent link asks for a demo shard: a random one of N per browser")
    p.add_argument("--data", type=Path, help="data directory (MNIST files) for demo shards")
    p.add_argument("--data-seed", type=int, default=0, help="seed of splits and partitions")
    p.add_argument("--partition", help="iid | shards | dirichlet:ALPHA (default: the task's)")
    p.add_argument("--task-module", type=Path, action="append", default=[], metavar="FILE.js",
                   help="serve this browser task module at /tasks/NAME.js (repeatable)")
    p.add_argument("--bundle", type=Path, action="append", default=[], metavar="DIR",
                   help="print the link for this provisioned agent bundle or monitor dir "
                        "(repeatable; secure profile)")
    p.add_argument("--qr", action="store_true", help="print a QR code of the agent link")
    p.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace) -> int:
    from fedmq.bundle import read_password
    from fedmq.tasks import DataConfig
    from fedmq.web.server import WebConfig, WebServer
    from fedmq.web.shard import ShardSource

    broker, user, password = _split_broker(args.broker)
    user = args.username or user
    if args.password is None and args.password_file is not None:
        password = read_password(args.password_file)
    password = args.password or password
    host, port = parse_listen(args.listen)
    source = None
    if args.task is not None:
        source = ShardSource(args.task, DataConfig(args.data, args.data_seed), args.partition)
    modules = {path.stem: path.resolve() for path in args.task_module}
    for path in modules.values():
        if not path.is_file():
            raise FileNotFoundError(f"--task-module {path} not found")
    config = WebConfig(broker, args.job, args.task, source, modules)
    server = WebServer(config, host, port, certfile=args.certfile, keyfile=args.keyfile)
    base = args.public_url or _base_url(host, server.port, server.tls)
    auth = {"broker": broker, "job": args.job, "user": user, "pass": password}
    shard = f"any/{args.shards}" if args.shards else None
    agent = page_url(base, "/agent", {**auth, "shard": shard})
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    print(f"fedmq web: serving {base} for job {args.job} on {broker}")
    print(f"  dashboard  {page_url(base, '/', auth)}")
    print(f"  agent      {agent}")
    for bundle in args.bundle:
        kind, link = bundle_link(bundle, base, broker, args.job)
        print(f"  {kind:<10} {link}")
    if args.qr:
        print(qr_text(agent))
    sys.stdout.flush()
    with server:
        stopped.wait()
    print("fedmq web: stopped", file=sys.stderr)
    return 0


def bundle_link(bundle: Path, base: str, broker: str, job: str) -> tuple[str, str]:
    """(what, link) for a provisioned agent bundle (its credentials and both Ed25519 keys
    in the fragment) or the monitor directory (read-only credentials).

    Raises:
        ValueError, FileNotFoundError: for a directory that is neither.
    """
    from fedmq.bundle import bundle_file, read_bundle, read_password

    auth = {"broker": broker, "job": job}
    toml = bundle_file(bundle, "agent")
    if not toml.is_file():
        if not (bundle / "password").is_file():
            raise FileNotFoundError(f"--bundle {bundle}: no agent.toml and no password")
        return "monitor", page_url(base, "/", {**auth, "user": "monitor",
                                               "pass": read_password(bundle / "password")})
    flags = read_bundle(toml)
    agent = str(flags["agent_id"])
    params = {
        **auth,
        "user": str(flags.get("username", agent)),
        "pass": read_password(Path(str(flags["password_file"]))),
        "agent": agent,
        "key": pem_base64url(Path(str(flags["signing_key"]))),
        "ckey": pem_base64url(Path(str(flags["coordinator_key"]))),
    }
    if "shard" in flags:
        params["shard"] = str(flags["shard"])
    return f"agent {agent}", page_url(base, "/agent", params)


def pem_base64url(path: Path) -> str:
    """A PEM file's DER bytes as unpadded base64url (PKCS#8 or SubjectPublicKeyInfo)."""
    body = "".join(line for line in path.read_text().splitlines()
                   if line and not line.startswith(_PEM_LINES))
    der = base64.b64decode(body, validate=True)
    return base64.urlsafe_b64encode(der).decode().rstrip("=")


def _split_broker(url: str) -> tuple[str, str | None, str | None]:
    """``ws[s]://user:pass@host:port`` as (URL without credentials, user, password)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"--broker {url!r}: browsers reach brokers at ws://HOST:PORT or wss://")
    netloc = host_port(parts.hostname, parts.port) if parts.port else parts.hostname
    clean = f"{parts.scheme}://{netloc}{parts.path if parts.path not in ('', '/') else ''}"
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return clean, user, password


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (an empty host is every interface) as (host, port).

    Raises:
        ValueError: for anything else.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address wants HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _base_url(host: str, port: int, tls: bool) -> str:
    shown = lan_address() if host in ("0.0.0.0", "::") else host
    return f"{'https' if tls else 'http'}://{host_port(shown, port)}"
