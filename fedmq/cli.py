"""``fedmq``: one console script, one subcommand per role.

fedmq demo          private broker + coordinator + N agents, live progress, summary
fedmq coordinator   run a job's coordinator against a broker
fedmq aggregator    a site aggregator: a site broker's updates summed, one partial upstream
fedmq agent         run one agent (one device) against a broker
fedmq agents        host several agents in one process (each its own MQTT connection)
fedmq monitor       watch jobs live from their topics alone
fedmq report        plots and a markdown summary of a finished run's directory
fedmq web           serve the live dashboard and the browser agent page

With fedmq-tools installed (``pip install -e tools/``, developers only), found by entry point:
fedmq swarm         many simulated agents (numpy trainer), one thread per process
fedmq bench         benchmarks: w1, ingest, scale, footprint (see BENCHMARKS.md)
fedmq chaos         train while killing agents, the broker and the coordinator
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator import CheckpointError, RoundConfig
from fedmq.agent_cli import (
    UNSIGNED_NOTICE,
    add_agent_arguments,
    add_device_options,
    check_cleartext,
    id_prefix,
    job_id,
)
from fedmq.agent_cli import add_connection as _add_connection
from fedmq.agent_cli import add_security as _add_security
from fedmq.agent_cli import add_task as _add_task
from fedmq.agent_cli import connection as _connection
from fedmq.agent_cli import data_config as _data
from fedmq.agent_cli import password as _password
from fedmq.agent_cli import stop_on_signals as _stop_on_signals
from fedmq.aggregator_cli import add_ingest_flags, register_aggregator, run_ingest_worker
from fedmq.bundle import expand_bundle, load_agent_keys, load_signing_key
from fedmq.fleet_schedule import add_fleet_flags
from fedmq.launch import AgentSettings, build_agent, build_coordinator
from fedmq.progress import RunRecorder, write_summary
from fedmq.provision import register as register_provision
from fedmq.round_flags import (
    add_mode_flags,
    add_round_flags,
    buffer_config,
    observers,
    round_config,
)
from fedmq.web.cli import add_demo_options as add_web_demo_options
from fedmq.web.cli import register as register_web
from protocol import Phase
from transport.connection import BrokerURL
from transport.link import PacketTooLargeError

if TYPE_CHECKING:
    from edge_agent.mqtt import AgentNode

#: commands that come with the fedmq-tools distribution (tools/), found by entry point
PLUGIN_GROUP = "fedmq.commands"
TOOL_COMMANDS = frozenset({"bench", "swarm", "chaos"})

log = logging.getLogger("fedmq")


def cmd_coordinator(args: argparse.Namespace) -> int:
    if args.ingest_worker:
        return run_ingest_worker(args, _connection(args, args.broker))
    config = _signed_config(round_config(args, args.job), args)
    run_dir = args.run_dir or Path("fedmq-runs") / args.job
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = RunRecorder(config.rounds, jsonl=run_dir / "metrics.jsonl")
    conn = _connection(args, args.broker)
    try:
        node = build_coordinator(
            config,
            conn,
            data=_data(args),
            run_dir=run_dir,
            resume=args.resume,
            on_action=observers(args, recorder),
            buffer=buffer_config(args),
            take_updates=not args.updates_from_workers,
        )
    except CheckpointError as exc:
        print(f"fedmq coordinator: {exc}", file=sys.stderr)
        return 2
    _stop_on_signals(node.stop)
    if args.resume:
        done = node.rounds.completed_rounds
        print(f"resuming run {node.rounds.run} after round {done} from {run_dir}")
    # the parsed URL: it never shows a password (the argument may hold one)
    print(f"job {args.job}: waiting for {config.min_agents} agent(s) on {conn.broker}")
    try:
        phase = node.run()
    except (ConnectionRefusedError, PacketTooLargeError) as exc:
        print(f"fedmq coordinator: {exc}", file=sys.stderr)
        return 3
    finally:
        recorder.close()
    summary = recorder.summary(node.rounds, job=args.job, run=node.rounds.run, task=args.task)
    write_summary(run_dir / "summary.json", summary)
    print(f"{phase.value}: {node.rounds.message}")
    if phase is Phase.STOPPED:
        print(f"agents keep waiting; continue with: fedmq coordinator ... --run-dir {run_dir} "
              "--resume")
    return 0 if phase in (Phase.DONE, Phase.STOPPED) else 1


def _agent_settings(
    args: argparse.Namespace, agent_id: str, shard: int, count: int, exit_when_done: bool
) -> AgentSettings:
    return AgentSettings(
        job=args.job,
        task=args.task,
        agent_id=agent_id,
        shard=shard,
        num_shards=count,
        partition=args.partition,
        data=_data(args),
        threads=args.threads,
        exit_when_done=exit_when_done,
        device=args.device,
        state_dir=args.state_dir,
        finetune_epochs=args.finetune_epochs,
        trainer=args.trainer,
    )


def cmd_agents(args: argparse.Namespace) -> int:
    from fedmq.fleet_driver import ScheduledFleet
    from fedmq.fleet_schedule import FleetSchedule, fleet_spec

    total = args.of or args.count
    conn = _connection(args, args.broker)

    def build(i: int, delay_s: float) -> AgentNode:
        settings = _agent_settings(args, f"{args.id_prefix}{i}", i, total, not args.keep_running)
        return build_agent(dataclasses.replace(settings, train_delay_s=delay_s), conn)

    fleet = ScheduledFleet(FleetSchedule(fleet_spec(args), total), build,
                           range(args.first, args.first + args.count))
    _stop_on_signals(lambda _why: fleet.stop())
    fleet.start()
    fleet.join()
    nodes = fleet.built
    refused = [n.refused for n in nodes if n.refused]
    if refused:
        print(f"fedmq agents: {refused[0]}", file=sys.stderr)
        return 3
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fedmq.demo import run_demo

    return run_demo(args)


def cmd_monitor(args: argparse.Namespace) -> int:
    from fedmq.monitor.run import main as monitor_main

    url = BrokerURL.parse(args.broker).with_credentials(args.username, _password(args))
    check_cleartext(url, args.ca_file, insecure=args.insecure)
    return monitor_main(url, job=args.job, as_json=args.json, model=args.model,
                        exit_when_done=args.exit_when_done, mqtt5=not args.mqtt311,
                        ca_file=args.ca_file)


def cmd_report(args: argparse.Namespace) -> int:
    from fedmq.report import write_report

    for path in write_report(args.run_dir, args.out):
        print(path)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fedmq", description="Federated learning over MQTT.")
    top.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="broker + coordinator + agents on this machine")
    p.add_argument("--agents", type=int, default=10)
    p.add_argument("--broker", help="use this broker instead of starting a private Mosquitto")
    p.add_argument("--insecure", action="store_true",
                   help="allow a password in a plain mqtt:// --broker URL (cleartext)")
    p.add_argument("--job", default="demo", type=job_id)
    p.add_argument("--mqtt311", action="store_true",
                   help="speak only MQTT 3.1.1 (by default MQTT 5, falling back to 3.1.1)")
    p.add_argument("--summary", type=Path, help="write the run summary as JSON here")
    p.add_argument("--run-dir", type=Path, help="checkpoint and metrics (default: a temp dir)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per agent process")
    p.add_argument("--metrics-port", help="serve Prometheus metrics on [HOST:]PORT")
    _add_task(p, default="digits")
    add_round_flags(p, rounds=10, deadline=30.0)
    add_web_demo_options(p)
    add_fleet_flags(p)
    # the demo shows compressed updates and delta-coded models (fedmq.demo.DEMO_CODEC,
    # DEMO_DOWNLINK_DELTA), or neither under --secagg
    p.set_defaults(func=cmd_demo, codec=None, username=None, password=None,
                   password_file=None, ca_file=None)

    p = sub.add_parser("coordinator", help="run a job's coordinator")
    p.add_argument("--job", required=True, type=job_id)
    p.add_argument("--run-dir", type=Path, help="checkpoint + metrics (default fedmq-runs/JOB)")
    p.add_argument("--resume", action="store_true", help="continue from the run dir's checkpoint")
    p.add_argument("--metrics-port", help="serve Prometheus metrics on [HOST:]PORT")
    _add_connection(p)
    _add_security(p, "coordinator")
    _add_task(p)
    add_round_flags(p, rounds=10, deadline=60.0)
    add_mode_flags(p)
    add_ingest_flags(p)
    p.set_defaults(func=cmd_coordinator)

    add_agent_arguments(sub.add_parser("agent", help="run one agent"))
    p = sub.add_parser("agents", help="host several agents")
    add_device_options(p)
    p.add_argument("--count", type=int, required=True, help="agents in this process")
    p.add_argument("--first", type=int, default=0, help="first shard index")
    p.add_argument("--of", type=int, help="total shards (default: --count)")
    p.add_argument("--id-prefix", default="agent-", type=id_prefix)
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="stay online after the run's final model",
    )
    add_fleet_flags(p)
    p.set_defaults(func=cmd_agents)
    _add_watch_commands(sub)
    register_aggregator(sub)
    register_provision(sub)
    register_web(sub)
    for plugin in entry_points(group=PLUGIN_GROUP):
        plugin.load()(sub)
    return top


def _add_watch_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("monitor", help="watch jobs live from their topics")
    p.add_argument("--job", type=job_id, help="only this job (default: every job on the broker)")
    p.add_argument("--json", action="store_true", help="one JSON object per event, for scripts")
    p.add_argument("--model", action="store_true",
                   help="also subscribe to the (megabyte) model topic for its header")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit once every job seen is done (0) or failed (1)")
    _add_connection(p, required=False)
    p.set_defaults(func=cmd_monitor, broker="mqtt://localhost:1883")

    p = sub.add_parser("report", help="plots and a summary of a finished run")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="holds metrics.jsonl")
    p.add_argument("--out", type=Path, help="write here instead of RUN_DIR")
    p.set_defaults(func=cmd_report)


# --- security: bundles, password files, signing keys (docs/SECURITY.md) ---------------------

def _signed_config(config: RoundConfig, args: argparse.Namespace) -> RoundConfig:
    signing_key = load_signing_key(args.signing_key) if args.signing_key else None
    agent_keys = load_agent_keys(args.agent_keys) if args.agent_keys else None
    if signing_key is None or agent_keys is None:
        print(f"fedmq coordinator: {UNSIGNED_NOTICE}", file=sys.stderr)
    sites = load_agent_keys(args.aggregator_keys) if args.aggregator_keys else None
    return dataclasses.replace(config, signing_key=signing_key, agent_keys=agent_keys,
                               aggregator_keys=sites)


def _commands(top: argparse.ArgumentParser) -> list[str]:
    for action in top._subparsers._group_actions if top._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = expand_bundle(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedmq: --bundle: {exc}", file=sys.stderr)
        return 2
    top = parser()
    missing = TOOL_COMMANDS.intersection(argv[:1]) - set(_commands(top))
    if missing:
        print(f"fedmq {min(missing)}: a developer tool; install it from a checkout with "
              "`pip install -e tools/` (fedmq-tools)", file=sys.stderr)
        return 2
    args = top.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedmq {args.command}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
