"""``fedmq provision``: every credential and config file a secure deployment needs, in one go.

Layout of the output directory (docs/SECURITY.md explains where each part goes)::

    DIR/broker/       mosquitto.conf (from deploy/mosquitto-secure.conf), passwd, acl,
                      ca.crt, server.crt, server.key
    DIR/ca/           ca.key: issues broker certificates; keep it offline
    DIR/coordinator/  coordinator.toml, password, signing.key, ca.crt, agents/AGENT_ID.pub
    DIR/agents/ID/    agent.toml, password, signing.key, coordinator.pub, ca.crt (one per device)
    DIR/monitor/      password, ca.crt: a read-only observer for ``fedmq monitor``

Invariants: secrets (private keys, passwords, the password file) are created
0600 and every directory 0700, each file with ``O_EXCL`` so nothing is ever
overwritten, and a non-empty DIR is refused: re-keying a running fleet by
accident would lock every device out. Each MQTT user name is the identity the
ACL grants topics to: an agent's user name is its agent id.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pwd
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from coordinator.config import DEFAULT_MAX_UPDATE_BYTES
from fedmq.bundle import PUBLIC_KEY_SUFFIX, Value
from fedmq.round_flags import byte_size
from fedmq.tasks import get_task
from protocol import ModelAnnouncement, check_id, encode_model
from protocol.chunks import MIN_MAX_PAYLOAD
from protocol.fields import MAX_ROLL_CALL
from protocol.keys import SigningKey
from protocol.signing import ENVELOPE_OVERHEAD
from transport.connection import packet_bound

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"
BROKER_TEMPLATE = DEPLOY_DIR / "mosquitto-secure.conf"
ACL_TEMPLATE = DEPLOY_DIR / "fedmq.acl"
#: the ACL template's lines after this marker are repeated for every agent
ACL_EACH_AGENT = "# @each agent"
COORDINATOR_USER = "coordinator"
MONITOR_USER = "monitor"
#: always in the broker certificate, so a broker on this machine verifies as either
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
#: an id in a msgpack list (at most 64 characters and its header)
ID_BYTES = 66
#: slack on top of the model, and the unit the cap is rounded up to
HEADROOM = 64 * 1024


@dataclass(frozen=True, slots=True)
class Deployment:
    """What to provision: one job, its agents, and where clients find the broker."""

    job: str
    agents: tuple[str, ...]
    #: broker names or addresses clients use; the first goes into the bundles' broker URL
    hosts: tuple[str, ...] = ("localhost",)
    port: int = 8883
    #: the broker's secure WebSockets (wss) port, for browsers (docs/WEB.md)
    ws_port: int = 8884
    #: the broker's listen address ("" = every interface)
    bind: str = ""
    #: where the broker/ files will live on the broker machine (default: DIR/broker here)
    broker_dir: Path | None = None
    task: str | None = None
    #: the broker's payload cap (0: none): models and updates above it travel in chunks
    max_payload: int = 0

    def __post_init__(self) -> None:
        check_id(self.job, "job")
        if not self.agents:
            raise ValueError("provision at least one agent")
        for agent in self.agents:
            check_id(agent, "agent")
        if len(set(self.agents)) != len(self.agents):
            raise ValueError("agent ids must be unique")
        reserved = {COORDINATOR_USER, MONITOR_USER} & set(self.agents)
        if reserved:
            raise ValueError(f"{sorted(reserved)} name fedmq's own broker users, not agents")
        if not self.hosts or not 0 < self.port < 65536 or not 0 < self.ws_port < 65536:
            raise ValueError("need at least one --host and ports in 1..65535")
        if self.ws_port == self.port:
            raise ValueError("the TLS port and the WebSockets port must differ")
        if self.max_payload and self.max_payload < MIN_MAX_PAYLOAD:
            raise ValueError(f"--max-payload must be at least {MIN_MAX_PAYLOAD} bytes")

    @property
    def run_as(self) -> str:
        """The account Mosquitto runs as: whoever owns its files."""
        return "mosquitto" if self.broker_dir else pwd.getpwuid(os.geteuid()).pw_name

    def largest_payload(self) -> int:
        """The largest message the job's clients publish, in bytes: one chunk under a
        payload cap; else the task's model announcement as float32, signed, naming every
        agent in its cohort and a full roll call; else the coordinator's default update
        limit. Sizing the model builds it, so ``task`` needs torch here."""
        if self.max_payload:
            return self.max_payload
        if self.task is None:
            return DEFAULT_MAX_UPDATE_BYTES
        from fedmq.launch import initial_weights

        task = get_task(self.task)
        model = ModelAnnouncement(
            job=self.job, run="r" * 64, round=1, model_id="m" * 32, task=self.task,
            plan=task.plan, codec="none", deadline_s=0.0, weights=initial_weights(task, 0))
        ids = (len(self.agents) + MAX_ROLL_CALL) * ID_BYTES
        need = len(encode_model(model)) + ENVELOPE_OVERHEAD + ids + HEADROOM
        return -(-need // HEADROOM) * HEADROOM  # rounded up

    @property
    def broker_url(self) -> str:
        host = self.hosts[0]
        return f"mqtts://{f'[{host}]' if ':' in host else host}:{self.port}"


def provision(d: Deployment, out: Path, now: dt.datetime | None = None) -> Path:
    """Write the deployment's files under ``out`` (created, or empty); returns ``out``.

    Raises:
        ValueError: if ``out`` exists and is not empty.
    """
    # cryptography's x509 is needed here only: `fedmq agent` must start without it
    from fedmq.credentials import make_ca, mosquitto_hash, new_password, server_certificate

    now = now or dt.datetime.now(dt.timezone.utc)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: provisioning never overwrites keys")
    _mkdir(out)
    out = out.resolve()
    out.chmod(0o700)
    broker_dir = d.broker_dir or out / "broker"
    ca = make_ca(f"fedmq {d.job} CA", now)
    server = server_certificate(ca, _unique([*d.hosts, *LOOPBACK_HOSTS]), now)
    coordinator_key = SigningKey.generate()
    passwords = {user: new_password() for user in (COORDINATOR_USER, MONITOR_USER, *d.agents)}
    largest = d.largest_payload()

    _write(out / "ca" / "ca.key", ca.key_pem, secret=True)
    broker = out / "broker"
    substitutions = {
        "BROKER_DIR": str(broker_dir),
        "PORT": str(d.port),
        "WS_PORT": str(d.ws_port),
        "BIND": f" {d.bind}" if d.bind else "",
        "JOB": d.job,
        "COORDINATOR": COORDINATOR_USER,
        "MONITOR": MONITOR_USER,
        "RUN_AS": d.run_as,
        "MAX_PACKET_SIZE": str(packet_bound(largest)),
    }
    _write(broker / "mosquitto.conf", _render(BROKER_TEMPLATE, substitutions))
    _write(broker / "acl", _render_acl(substitutions, d.agents))
    hashed = "".join(f"{user}:{mosquitto_hash(pw)}\n" for user, pw in passwords.items())
    _write(broker / "passwd", hashed.encode(), secret=True)
    _write(broker / "ca.crt", ca.cert_pem)
    _write(broker / "server.crt", server.cert_pem)
    _write(broker / "server.key", server.key_pem, secret=True)

    common: dict[str, Value] = {"broker": d.broker_url, "job": d.job}
    if d.task is not None:
        common["task"] = d.task
    # the coordinator refuses what the broker would refuse anyway (or chunks for its cap)
    limit: dict[str, Value] = (
        {"max_payload": d.max_payload} if d.max_payload else {"max_update_bytes": largest}
    )
    coordinator = out / "coordinator"
    _write_node(coordinator, "coordinator.toml", passwords[COORDINATOR_USER], ca.cert_pem, {
        **common, "username": COORDINATOR_USER, "signing_key": "signing.key",
        "agent_keys": "agents", **limit,
    })
    _write(coordinator / "signing.key", coordinator_key.to_pem(), secret=True)
    for index, agent in enumerate(d.agents):
        key = SigningKey.generate()
        _write(coordinator / "agents" / f"{agent}{PUBLIC_KEY_SUFFIX}", key.public.to_pem())
        bundle = out / "agents" / agent
        _write_node(bundle, "agent.toml", passwords[agent], ca.cert_pem, {
            **common, "agent_id": agent, "shard": f"{index}/{len(d.agents)}",
            "username": agent, "signing_key": "signing.key", "coordinator_key": "coordinator.pub",
        })
        _write(bundle / "signing.key", key.to_pem(), secret=True)
        _write(bundle / "coordinator.pub", coordinator_key.public.to_pem())
    _write(out / "monitor" / "password", f"{passwords[MONITOR_USER]}\n".encode(), secret=True)
    _write(out / "monitor" / "ca.crt", ca.cert_pem)
    return out


def _write_node(
    where: Path, toml_name: str, password: str, ca_pem: bytes, flags: dict[str, Value]
) -> None:
    _write(where / "password", f"{password}\n".encode(), secret=True)
    _write(where / "ca.crt", ca_pem)
    toml = {**flags, "password_file": "password", "ca_file": "ca.crt"}
    _write(where / toml_name, _toml(toml, command=toml_name.removesuffix(".toml")))


def _toml(values: Mapping[str, Value], command: str) -> bytes:
    """Flat TOML: keys are CLI flag names, values strings, numbers or booleans."""
    lines = [
        f"# A fedmq {command} bundle, written by `fedmq provision`: the flags of "
        f"`fedmq {command} --bundle`",
        "# (a flag given on the command line wins). Paths are relative to this file.",
    ]
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{key} = "{escaped}"')
        else:
            lines.append(f"{key} = {value}")
    return ("\n".join(lines) + "\n").encode()


def _render(template: Path, values: Mapping[str, str]) -> bytes:
    return Template(template.read_text()).substitute(values).encode()


def _render_acl(values: Mapping[str, str], agents: Sequence[str]) -> bytes:
    """The ACL template, its part after the ``# @each agent`` marker once per agent."""
    text = ACL_TEMPLATE.read_text()
    head, marker, each = text.partition(f"{ACL_EACH_AGENT}\n")
    if not marker:
        raise ValueError(f"{ACL_TEMPLATE} lacks the line {ACL_EACH_AGENT!r}")
    blocks = [Template(each).substitute(values, AGENT=agent) for agent in agents]
    return (Template(head).substitute(values) + "\n".join(blocks)).encode()


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _mkdir(path: Path) -> None:
    """Create ``path`` and its missing parents 0700 (exactly: mkdir's mode passes the umask)."""
    for directory in reversed([p for p in (path, *path.parents) if not p.exists()]):
        directory.mkdir(mode=0o700)
        directory.chmod(0o700)


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Create ``path``, never overwriting; a secret is 0600 from the start, never briefly wider."""
    _mkdir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- the sub-command ------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("provision", help="generate credentials, keys, certificates and bundles")
    p.add_argument("--job", required=True)
    p.add_argument("--agents", type=int, required=True, help="how many agents to provision")
    p.add_argument("--id-prefix", default="agent-", help="agent ids are PREFIX0, PREFIX1, ...")
    p.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    p.add_argument("--host", action="append", dest="hosts",
                   help="the broker's name or address as clients reach it (repeatable; "
                        "default localhost); the first goes into the bundles")
    p.add_argument("--port", type=int, default=8883, help="the broker's TLS port")
    p.add_argument("--ws-port", type=int, default=8884,
                   help="the broker's secure WebSockets port, for browsers (docs/WEB.md)")
    p.add_argument("--bind", default="", help="the broker's listen address (default: all)")
    p.add_argument("--broker-dir", type=Path,
                   help="where the broker/ files will be installed on the broker machine "
                        "(default: OUT/broker, to run the broker right here)")
    p.add_argument("--task", help="stored in the bundles (else give --task when starting); "
                                  "sizes the broker's payload cap to its model")
    p.add_argument("--max-payload", type=byte_size, default=0,
                   help="cap broker payloads at this many bytes (e.g. 128k): models and "
                        "updates travel in chunks (default: what --task's model needs)")
    p.set_defaults(func=cmd_provision)


def cmd_provision(args: argparse.Namespace) -> int:
    if args.agents < 1:
        raise ValueError("--agents must be >= 1")
    deployment = Deployment(
        job=args.job,
        agents=tuple(f"{args.id_prefix}{i}" for i in range(args.agents)),
        hosts=tuple(args.hosts or ("localhost",)),
        port=args.port,
        ws_port=args.ws_port,
        bind=args.bind,
        broker_dir=args.broker_dir,
        task=args.task,
        max_payload=args.max_payload,
    )
    out = provision(deployment, args.out)
    print(f"provisioned job {deployment.job}: {len(deployment.agents)} agents in {out}")
    if deployment.broker_dir is None:
        # its config names the account that owns the files, so this works as root too
        print(f"  broker       mosquitto -c {out / 'broker' / 'mosquitto.conf'}")
    else:
        print(f"  broker       install {out / 'broker'}/* into {deployment.broker_dir}, owned by "
              f"mosquitto (docs/SECURITY.md, step 2), then as root: "
              f"mosquitto -c {deployment.broker_dir / 'mosquitto.conf'}")
    print(f"  coordinator  fedmq coordinator --bundle {out / 'coordinator'}")
    print(f"  agent        fedmq agent --bundle {out / 'agents' / deployment.agents[0]}")
    print(f"  keep offline {out / 'ca' / 'ca.key'}   (see docs/SECURITY.md)")
    return 0
