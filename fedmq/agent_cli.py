"""``fedmq agent``: one device's agent, from a config file and flags, on the fewest imports.

``fedmq agent`` is what a Raspberry Pi runs for months, so the console script
(:mod:`fedmq.entry`) sends it here without importing the full CLI and what it
pulls in (the coordinator, benchmarks, provisioning, chaos). The flags every
agent-side command shares live here too; :mod:`fedmq.cli` imports them.

Precedence, lowest first: a bundle named in the config file, the config file
(``--config``, :mod:`fedmq.agent_config`), then flags (a ``--bundle`` flag's
values count as flags).

Invariant: module-level imports are the standard library and
:mod:`fedmq.agent_config`; numpy-bound modules are imported in :func:`main`
after the thread budget is in the environment, because OpenBLAS and OpenMP
read it once, when they load.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from fedmq.agent_config import CHOICES, read_agent_config

if TYPE_CHECKING:
    from edge_agent.policy import ResourcePolicy
    from fedmq.launch import AgentSettings, Connection
    from fedmq.tasks import DataConfig
    from transport.connection import BrokerURL

log = logging.getLogger("fedmq.agent")

UNSIGNED_NOTICE = (
    "unsigned: anyone who can publish to the broker can forge models and updates; "
    "see docs/SECURITY.md"
)
#: what each role's --signing-key signs
_SIGNS = {"coordinator": "model", "agent": "update"}
#: what ``fedmq agent`` cannot start without, as flag dests (config keys)
REQUIRED = ("broker", "job", "task", "agent_id", "shard")
#: thread-pool sizes read once, when numpy's OpenBLAS or torch's OpenMP loads
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: journald stamps time, host and unit itself: its lines carry only what it lacks
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants I/N, e.g. 3/10, got {value!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {value}: need 0 <= I < N")
    return index, count


def add_connection(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker", required=required, help="mqtt://[user:pass@]host[:port] or mqtts://")
    g.add_argument("--username", help="MQTT user name (overrides the URL)")
    g.add_argument("--password", help="MQTT password (overrides the URL)")
    g.add_argument("--password-file", type=Path, help="read the MQTT password from this file")
    g.add_argument("--ca-file", type=Path, help="CA certificate for mqtts://")
    g.add_argument("--mqtt311", action="store_true", help="speak MQTT 3.1.1 instead of 5")
    g.add_argument("--insecure", action="store_true",
                   help="allow a password over plain mqtt:// (cleartext), on a network you trust")


def add_task(p: argparse.ArgumentParser, default: str | None = None, required: bool = True) -> None:
    from fedmq.tasks import TASKS

    g = p.add_argument_group("task")
    g.add_argument(
        "--task",
        required=required and default is None,
        default=default,
        help=f"built-in ({', '.join(TASKS)}) or module:object",
    )
    g.add_argument("--data", type=Path, help="data directory (MNIST files)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of splits and partitions")
    g.add_argument("--partition", help="iid | shards | dirichlet:ALPHA (default: the task's)")


def add_security(p: argparse.ArgumentParser, role: str) -> None:
    g = p.add_argument_group("security (docs/SECURITY.md)")
    g.add_argument(
        "--bundle",
        type=Path,
        help=f"a bundle from `fedmq provision` (its dir or {role}.toml): supplies --broker, "
        "--job, credentials and keys; flags given here win",
    )
    g.add_argument("--signing-key", type=Path, help=f"sign every {_SIGNS[role]} with this key")
    if role == "coordinator":
        g.add_argument(
            "--agent-keys",
            type=Path,
            help="directory of AGENT_ID.pub: accept only updates signed by these agents",
        )
        g.add_argument(
            "--aggregator-keys",
            type=Path,
            help="directory of SITE.pub: accept partial aggregates signed by these site "
            "aggregators or ingest workers (docs/SCALE.md)",
        )
    else:
        g.add_argument(
            "--coordinator-key",
            type=Path,
            help="train only on models signed by this key (the coordinator's public key)",
        )


def add_device_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The flags of every command that hosts agents (``agent``, ``agents``)."""
    p.add_argument("--job", required=required)
    p.add_argument("--trainer", choices=CHOICES["trainer"], default="torch",
                   help="torch, or numpy for devices without torch (linear and mlp models)")
    p.add_argument("--threads", type=int, help="trainer threads (default: the library's)")
    p.add_argument("--device", help="device class announced in presence, e.g. rpi4")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                   help="fine-tune the run's final model on local data for E epochs: "
                        "the device model (never sent)")
    p.add_argument(
        "--state-dir",
        type=Path,
        help="keep each agent's last global model, device model and codec residual here "
        "across restarts (default: memory only)",
    )
    add_connection(p, required=required)
    add_task(p, required=required)


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    """``fedmq agent``'s flags; the required ones may come from ``--config`` instead."""
    p.add_argument("--config", type=Path,
                   help="agent TOML file (deploy/agent.example.toml); flags given here win")
    add_device_options(p, required=False)
    add_security(p, "agent")
    p.add_argument("--agent-id")
    p.add_argument("--shard", type=shard, help="I/N: shard I of N")
    p.add_argument(
        "--exit-when-done",
        action="store_true",
        help="exit when the coordinator publishes the final model",
    )
    g = p.add_argument_group("resource policy (docs/EDGE.md)")
    g.add_argument("--windows", metavar="HH:MM-HH:MM[,...]",
                   help="train only in these local times, e.g. 22:00-06:00 (default: any time)")
    g.add_argument("--max-threads", type=int, help="CPU threads the trainer may use")
    g.add_argument("--max-rss-mb", type=float, help="decline rounds while own RSS is above")
    g.add_argument("--min-available-mb", type=float,
                   help="decline rounds while less system memory is available")
    g.add_argument("--policy-hook", metavar="COMMAND|MODULE:FUNCTION",
                   help="run before each round; a non-zero exit (or False) declines it")
    g.add_argument("--hook-timeout-s", type=float, default=30.0,
                   help="a hook running longer declines the round")
    p.set_defaults(func=cmd_agent)


def password(args: argparse.Namespace) -> str | None:
    from fedmq.bundle import read_password

    if args.password is None and args.password_file is not None:
        return read_password(args.password_file)
    value: str | None = args.password
    return value


def connection(args: argparse.Namespace, broker: str) -> Connection:
    """How to reach ``broker`` with the credentials the flags give.

    Raises:
        ValueError: for a password over plain ``mqtt://`` without ``--insecure``: a
            ``--broker mqtt://...`` given over a TLS bundle would otherwise send it in
            cleartext (and leave the bundle's CA unused).
    """
    from fedmq.launch import Connection
    from transport.connection import BrokerURL

    url = BrokerURL.parse(broker).with_credentials(args.username, password(args))
    check_cleartext(url, args.ca_file, insecure=args.insecure)
    return Connection(url, mqtt5=not args.mqtt311, ca_file=args.ca_file)


def check_cleartext(url: BrokerURL, ca_file: Path | None, *, insecure: bool) -> None:
    """Refuse (or, with ``insecure``, warn about) a password sent over plain MQTT.

    Raises:
        ValueError: for a password over ``mqtt://`` without ``insecure``.
    """
    if url.tls:
        return
    unused = f"; the CA file {ca_file} is not used over mqtt://" if ca_file else ""
    if url.password is None:
        if ca_file:
            log.warning("broker %s is plain MQTT%s", url, unused)
        return
    why = f"{url} is plain MQTT: the password would cross the network in cleartext{unused}"
    if not insecure:
        raise ValueError(f"refusing to connect: {why}. Use mqtts:// (a bundle's own "
                         "broker URL), or --insecure on a network you trust")
    log.warning("--insecure: %s", why)


def data_config(args: argparse.Namespace) -> DataConfig:
    from fedmq.tasks import DataConfig

    return DataConfig(data_dir=args.data, seed=args.data_seed)


def signed_settings(settings: AgentSettings, args: argparse.Namespace) -> AgentSettings:
    from fedmq.bundle import load_signing_key, load_verify_key

    signing_key = load_signing_key(args.signing_key) if args.signing_key else None
    coordinator_key = load_verify_key(args.coordinator_key) if args.coordinator_key else None
    if signing_key is None or coordinator_key is None:
        print(f"fedmq agent: {UNSIGNED_NOTICE}", file=sys.stderr)
    return dataclasses.replace(settings, signing_key=signing_key, coordinator_key=coordinator_key)


def stop_on_signals(stop: Callable[[str], object]) -> None:
    """Ctrl-C and SIGTERM (systemd's stop) end the node cleanly."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        # Hand off: the signal may have interrupted this thread inside a lock ``stop`` needs.
        name = signal.Signals(signum).name
        threading.Thread(target=stop, args=(name,), name="stop", daemon=True).start()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def resource_policy(args: argparse.Namespace) -> ResourcePolicy:
    from edge_agent.policy import ResourcePolicy, Window

    windows = tuple(Window.parse(w) for w in (args.windows or "").split(",") if w.strip())
    return ResourcePolicy(
        windows=windows,
        max_threads=args.max_threads,
        max_rss_mb=args.max_rss_mb,
        min_available_mb=args.min_available_mb,
        hook=args.policy_hook,
        hook_timeout_s=args.hook_timeout_s,
    )


def agent_settings(args: argparse.Namespace) -> AgentSettings:
    from fedmq.launch import AgentSettings

    index, count = args.shard
    policy = resource_policy(args)
    threads = args.threads
    if policy.max_threads is not None:
        threads = min(threads or policy.max_threads, policy.max_threads)
    return AgentSettings(
        job=args.job,
        task=args.task,
        agent_id=args.agent_id,
        shard=index,
        num_shards=count,
        partition=args.partition,
        data=data_config(args),
        threads=threads,
        exit_when_done=args.exit_when_done,
        device=args.device,
        state_dir=args.state_dir,
        finetune_epochs=args.finetune_epochs,
        trainer=args.trainer,
        policy=policy,
    )


def cmd_agent(args: argparse.Namespace) -> int:
    from fedmq.launch import build_agent
    from fedmq.tasks.data import release_datasets

    missing = [name for name in REQUIRED if getattr(args, name) is None]
    if missing:
        wanted = ", ".join(f"--{name.replace('_', '-')} (config key {name})" for name in missing)
        raise ValueError(f"missing {wanted}")
    settings = signed_settings(agent_settings(args), args)
    conn = connection(args, args.broker)
    node = build_agent(settings, conn)
    release_datasets()  # the whole train and test set is dead weight on a device
    trim_heap()
    if (saved := node.saved_model) is not None:
        log.info("%s: resuming with the global model of run %s, round %d from %s",
                 settings.agent_id, saved.run, saved.round, settings.state_dir)

    def stop(why: str) -> None:
        log.info("%s: %s received: going offline", settings.agent_id, why)
        node.stop()

    stop_on_signals(stop)
    log.info("%s: job %s on %s, %s trainer", settings.agent_id, settings.job,
             conn.broker, settings.trainer)
    node.run()
    if node.refused:
        print(f"fedmq agent: {node.refused}", file=sys.stderr)
        return 3
    log.info("%s: offline, exiting", settings.agent_id)
    return 0


def parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser (``--log-level``, one sub-command) and ``agent``'s own."""
    top = argparse.ArgumentParser(prog="fedmq", description="Federated learning over MQTT.")
    top.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = top.add_subparsers(dest="command", required=True)
    agent = sub.add_parser("agent", help="run one agent")
    add_agent_arguments(agent)
    return top, agent


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """``flag``'s value in ``argv`` (``--flag V`` or ``--flag=V``), read before the full parse."""
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def limit_threads(argv: Sequence[str], defaults: dict[str, object]) -> None:
    """Put the thread budget in the environment before numpy (or torch) loads."""
    value = flag_value(argv, "--max-threads") or defaults.get("max_threads")
    if value is None:
        return
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(value))


def trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc keeps them after a dataset is parsed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to do
        return
    libc.malloc_trim(0)


def log_format() -> str:
    """Plain lines; without a timestamp under systemd, whose journal adds its own."""
    return JOURNAL_FORMAT if "JOURNAL_STREAM" in os.environ else TERMINAL_FORMAT


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    where = flag_value(argv, "--config")
    try:
        defaults: dict[str, object] = dict(read_agent_config(Path(where))) if where else {}
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedmq agent: --config: {exc}", file=sys.stderr)
        return 2
    limit_threads(argv, defaults)
    from fedmq.bundle import expand_bundle

    try:
        argv = expand_bundle(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedmq: --bundle: {exc}", file=sys.stderr)
        return 2
    top, agent = parsers()
    if "log_level" in defaults:
        top.set_defaults(log_level=defaults.pop("log_level"))
    agent.set_defaults(**defaults)
    args = top.parse_args(argv)
    logging.basicConfig(level=str(args.log_level).upper(), format=log_format())
    try:
        code: int = args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedmq agent: {exc}", file=sys.stderr)
        return 2
    return code
