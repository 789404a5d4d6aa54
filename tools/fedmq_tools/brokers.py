"""Private NATS and RabbitMQ brokers beside the private Mosquitto, for tests and benchmarks.

Each is a child process of ours on free loopback ports, configured from files this
module writes into its own temporary directory, and stopped by its PID (its process
group, for RabbitMQ's shell wrapper and Erlang VM). Nothing here touches a system
service or a system-wide data directory: RabbitMQ gets its own node name, base, mnesia
directory, distribution port, Erlang cookie (``HOME``) and its own ``epmd`` on a port of
its own; NATS its own JetStream store. docs/BROKERS.md says what each broker does.

``private_broker(kind)`` is the one entry point: ``mosquitto`` is
:class:`fedmq.broker.LocalBroker` (what the demo runs), ``nats`` and ``rabbitmq`` are
defined here with the same interface (``url``, ``pid``, ``start``, ``stop``, ``kill``,
``log``, a context manager). ``broker_for(kind_or_url)`` also takes the URL of a broker
someone else runs (:class:`ExternalBroker`), for benchmarks of any broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from fedmq.broker import BrokerError, LocalBroker, free_port
from transport.connection import BrokerURL

#: the brokers fedmq is tested against (docs/BROKERS.md)
KINDS = ("mosquitto", "nats", "rabbitmq")

NATS_HINT = "nats-server is not installed (Debian: apt-get install nats-server; scripts/setup.sh)"
RABBITMQ_HINT = (
    "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server; "
    "scripts/setup.sh)"
)
#: where Debian's rabbitmq-server package keeps the real start script (its /usr/sbin
#: wrapper switches to the system user and the system data directory)
RABBITMQ_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class PrivateBroker(Protocol):
    """What tests and benchmarks need of a private broker, whichever it is."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> PrivateBroker: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def log(self) -> str: ...

    def __enter__(self) -> PrivateBroker: ...

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def _binary(name: str, hint: str, *extra: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", *extra) if os.access(p, os.X_OK)),
        None,
    )
    if found is None:
        raise BrokerError(hint)
    return found


def find_nats() -> str:
    """Path of nats-server.

    Raises:
        BrokerError: with the install hint when it is missing.
    """
    return _binary("nats-server", NATS_HINT)


def find_rabbitmq() -> tuple[str, str]:
    """Paths of RabbitMQ's start script and of ``epmd``.

    Raises:
        BrokerError: with the install hint when either is missing.
    """
    if not os.access(RABBITMQ_SCRIPT, os.X_OK):
        raise BrokerError(RABBITMQ_HINT)
    return str(RABBITMQ_SCRIPT), _binary("epmd", RABBITMQ_HINT)


class _ChildBroker:
    """A broker child process in its own session (so its whole group can be signalled)."""

    name = "broker"

    def __init__(self, start_timeout_s: float) -> None:
        self.port = free_port()
        self._timeout = start_timeout_s
        self.dir = Path(tempfile.mkdtemp(prefix=f"fedmq-{self.name}-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> _ChildBroker:
        command, env = self._command()
        log = (self.dir / "broker.log").open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
            env={**os.environ, **env}, start_new_session=True,
        )
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise BrokerError(f"{self.name} exited with {code}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)  # polling a port that is still being bound
        self.stop()
        raise BrokerError(f"{self.name} did not listen on {self.port} in {self._timeout} s")

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.process.pid, sig)  # the group we started: wrapper and VM alike

    def stop(self) -> None:
        """SIGTERM to the broker's process group, then SIGKILL if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the whole group, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self) -> str:
        path = self.dir / "broker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def __enter__(self) -> _ChildBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class NatsBroker(_ChildBroker):
    """nats-server with its MQTT front end and JetStream (which MQTT needs) on loopback."""

    name = "nats"

    def __init__(self, start_timeout_s: float = 20.0, extra_config: str = "") -> None:
        super().__init__(start_timeout_s)
        self.client_port = free_port()
        self._extra = extra_config

    def config(self) -> str:
        return (
            f"server_name: fedmq-{self.port}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"jetstream {{\n  store_dir: \"{self.dir / 'js'}\"\n"
            "  max_memory_store: 256MB\n  max_file_store: 2GB\n}\n"
            # MQTT sessions' consumers in memory, not in files: each QoS 1 subscription is a
            # JetStream consumer, written on every delivery (docs/BROKERS.md, NATS)
            f"mqtt {{\n  listen: 127.0.0.1:{self.port}\n  consumer_memory_storage: true\n}}\n"
            f"{self._extra}\n"
        )

    def _command(self) -> tuple[list[str], dict[str, str]]:
        conf = self.dir / "nats.conf"
        conf.write_text(self.config())
        return [find_nats(), "-c", str(conf)], {}


class RabbitBroker(_ChildBroker):
    """rabbitmq-server with ``rabbitmq_mqtt``, a node of its own in a temporary directory.

    Its Erlang distribution needs an ``epmd``: we start one on a free port, as a child
    of ours, and stop it by PID after the node.
    """

    name = "rabbitmq"

    def __init__(self, start_timeout_s: float = 90.0, extra_config: str = "") -> None:
        super().__init__(start_timeout_s)
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"fedmq-{uuid.uuid4().hex[:8]}@localhost"
        self._extra = extra_config
        self._epmd: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        return (
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
            "log.console = true\n"
            "log.file = false\n"
            f"{self._extra}\n"
        )

    def _command(self) -> tuple[list[str], dict[str, str]]:
        script, epmd = find_rabbitmq()
        if self._epmd is None or self._epmd.poll() is not None:
            epmd_log = (self.dir / "epmd.log").open("ab")
            self._epmd = subprocess.Popen(
                [epmd, "-port", str(self.epmd_port)], stdout=epmd_log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        (self.dir / "rabbitmq.conf").write_text(self.config())
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        env = {
            "HOME": str(self.dir),  # the Erlang cookie lives here, not in the user's home
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_BASE": str(self.dir),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
        }
        return [script], env

    @property
    def pid(self) -> int | None:
        """The Erlang VM's PID, which does the work (its CPU and memory are the broker's),
        from the pid file it writes once up; the start script's until then."""
        try:
            return int((self.dir / "rabbitmq.pid").read_text().strip())
        except (OSError, ValueError):
            return super().pid

    def ctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """``rabbitmqctl ARGS`` against this node; its output."""
        ctl = RABBITMQ_SCRIPT.with_name("rabbitmqctl")
        env = {**os.environ, "HOME": str(self.dir), "ERL_EPMD_PORT": str(self.epmd_port),
               "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf")}
        done = subprocess.run([str(ctl), "-n", self.node, *args], capture_output=True,
                              env=env, timeout=timeout_s, check=True)
        return done.stdout.decode(errors="replace")

    def stop(self) -> None:
        super().stop()
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.terminate()
            self._epmd.wait(timeout=10)


def private_broker(kind: str) -> PrivateBroker:
    """A private broker of ``kind`` (one of :data:`KINDS`), not started yet.

    Raises:
        ValueError: for another kind.
    """
    if kind == "mosquitto":
        return LocalBroker()
    if kind == "nats":
        return NatsBroker()
    if kind == "rabbitmq":
        return RabbitBroker()
    raise ValueError(f"broker kind must be one of {', '.join(KINDS)}, got {kind!r}")


@dataclass(frozen=True, slots=True)
class ExternalBroker:
    """A broker at ``url`` that someone else started and keeps: nothing to start or stop,
    no PID to measure, no log to read."""

    url: str
    pid: None = None

    def start(self) -> ExternalBroker:
        return self

    def stop(self) -> None:
        """Not ours to stop."""

    def kill(self) -> None:
        """Not ours to kill."""

    def log(self) -> str:
        return ""

    def __enter__(self) -> ExternalBroker:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Left running."""


def broker_for(spec: str, *, mosquitto_config: str = "") -> PrivateBroker:
    """A private broker of the kind ``spec`` names (``mosquitto_config`` lines go into a
    private Mosquitto's config), or an :class:`ExternalBroker` when ``spec`` is a URL.

    Raises:
        ValueError: for a spec that is neither a kind nor a URL.
    """
    if "://" in spec:
        BrokerURL.parse(spec)  # a clear error for a bad URL before any fleet starts
        return ExternalBroker(spec)
    if spec == "mosquitto":
        return LocalBroker(extra_config=mosquitto_config)
    return private_broker(spec)
