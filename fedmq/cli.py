"""``fedmq``: one console script, one subcommand per role.

fedmq demo          private broker + coordinator + N agents, live progress, summary
fedmq coordinator   run a job's coordinator against a broker
fedmq agent         run one agent (one device) against a broker
fedmq agents        host several agents in one process (each its own MQTT connection)
fedmq monitor       watch jobs live from their topics alone
fedmq report        plots and a markdown summary of a finished run's directory
fedmq swarm         many simulated agents (numpy trainer), one thread per process
fedmq bench         benchmarks: w1, ingest, scale, footprint (see BENCHMARKS.md)
fedmq chaos         train while killing agents, the broker and the coordinator
fedmq web           serve the live dashboard and the browser agent page
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from coordinator import Action, CheckpointError, RoundConfig, parse_aggregator
from coordinator.config import SAMPLE_POLICIES
from coordinator.optimisers import SERVER_OPT_HELP, parse_server_opt
from coordinator.strategy import AGGREGATOR_HELP
from edge_agent.connection import BrokerURL
from edge_agent.personal import with_local_layers
from edge_agent.proximal import MU
from fedmq.agent_cli import (
    UNSIGNED_NOTICE,
    add_agent_arguments,
    add_device_options,
)
from fedmq.agent_cli import add_connection as _add_connection
from fedmq.agent_cli import add_security as _add_security
from fedmq.agent_cli import add_task as _add_task
from fedmq.agent_cli import connection as _connection
from fedmq.agent_cli import data_config as _data
from fedmq.agent_cli import main as agent_main
from fedmq.agent_cli import password as _password
from fedmq.agent_cli import stop_on_signals as _stop_on_signals
from fedmq.bench.cli import register as register_bench
from fedmq.bundle import (
    expand_bundle,
    load_agent_keys,
    load_signing_key,
)
from fedmq.chaos import add_parser as register_chaos
from fedmq.entry import command_of
from fedmq.launch import AgentSettings, build_agent, build_coordinator
from fedmq.progress import RunRecorder
from fedmq.provision import register as register_provision
from fedmq.tasks import get_task
from fedmq.web.cli import add_demo_options as add_web_demo_options
from fedmq.web.cli import register as register_web
from protocol import CODECS, Phase, TrainPlan, check_codec
from protocol.compress import DOWNLINKS

log = logging.getLogger("fedmq")


def _codec(value: str) -> str:
    try:
        return check_codec(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mu(value: str) -> float:
    try:
        mu = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mu wants a number, got {value!r}") from None
    if not math.isfinite(mu) or mu < 0:
        raise argparse.ArgumentTypeError(f"--mu must be finite and >= 0, got {value!r}")
    return mu


def _aggregator(value: str) -> str:
    try:
        parse_aggregator(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3}


def _size(value: str) -> int:
    """Bytes from ``131072``, ``128k`` or ``1m`` (binary units, as brokers count)."""
    number = value.strip().lower().rstrip("ib")
    digits = number.rstrip("kmg")
    unit = number[len(digits):]
    try:
        return int(float(digits) * _UNITS[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (try 131072, 128k, 1m)") from None


def _add_rounds(p: argparse.ArgumentParser, rounds: int, deadline: float) -> None:
    g = p.add_argument_group("rounds")
    g.add_argument("--rounds", type=int, default=rounds)
    g.add_argument(
        "--quorum",
        type=int,
        help="close a round at K accepted updates "
        "(default: every agent online when the round opens)",
    )
    g.add_argument(
        "--min-replies", type=int, default=1, help="at the deadline, close with at least M updates"
    )
    g.add_argument("--deadline", type=float, default=deadline, help="seconds per round")
    g.add_argument("--min-agents", type=int, help="agents online before round 1")
    g.add_argument("--on-short-round", choices=("retry", "stop"), default="retry")
    g.add_argument("--max-retries", type=int, default=3)
    g.add_argument("--target-accuracy", type=float, help="stop once test accuracy reaches this")
    g.add_argument(
        "--codec",
        default="none",
        type=_codec,
        help=f"update codec pipeline: stages {', '.join(CODECS)} joined by '+', "
        "e.g. topk:0.01+int8+zstd (docs/CODECS.md)",
    )
    g.add_argument(
        "--downlink", default="fp32", choices=DOWNLINKS, help="the global model's wire dtype"
    )
    g.add_argument("--aggregator", default="fedavg", type=_aggregator, help=AGGREGATOR_HELP)
    g.add_argument("--clip-norm", type=float, metavar="C",
                   help="scale each update's delta down to L2 norm C before aggregating "
                        "(any aggregator; docs/ROBUSTNESS.md)")
    g.add_argument("--epochs", type=int, help="local epochs (default: the task's)")
    g.add_argument("--batch-size", type=int, help="local batch size (default: the task's)")
    g.add_argument("--lr", type=float, help="local learning rate (default: the task's)")
    g.add_argument("--seed", type=int, help="training seed (default: the task's)")
    g.add_argument("--mu", type=_mu, default=0.0,
                   help="FedProx proximal weight mu >= 0 sent to agents (default 0: FedAvg; "
                        "docs/STRATEGIES.md)")
    g.add_argument("--local-layers", metavar="NAMES",
                   help="comma-separated tensors kept on each device, never sent (FedPer), "
                        "e.g. 4.weight,4.bias; '' for none (default: the task's)")
    g.add_argument("--no-eval", action="store_true", help="skip server-side evaluation")
    g.add_argument("--max-update-bytes", type=_size, default=64 * 1024 * 1024,
                   help="reject larger updates (e.g. 64m)")
    g.add_argument("--max-payload", type=_size, default=0,
                   help="the broker's payload cap, e.g. 128k for AWS IoT Core: larger "
                        "models and updates travel as chunks (default: no cap)")
    _add_strategy(p)


def _server_opt(value: str) -> str:
    try:
        parse_server_opt(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _add_strategy(p: argparse.ArgumentParser) -> None:
    """Server optimiser, client sampling, DP-FedAvg, early stopping (docs/STRATEGIES.md)."""
    g = p.add_argument_group("strategy (docs/STRATEGIES.md)")
    g.add_argument("--server-opt", default="fedavg", type=_server_opt, metavar="SPEC",
                   help=SERVER_OPT_HELP)
    share = g.add_mutually_exclusive_group()
    share.add_argument("--sample-fraction", type=float, metavar="F",
                       help="ask a fraction 0<F<=1 of the eligible agents online each round "
                            "(never fewer than quorum/min-replies need; default: all)")
    share.add_argument("--sample-count", type=int, metavar="K",
                       help="ask K of the eligible agents online each round")
    g.add_argument("--sample-policy", choices=SAMPLE_POLICIES, default="uniform",
                   help="uniform, or by-samples: weighted by the sample counts agents advertise")
    g.add_argument("--device-class", action="append", metavar="NAME",
                   help="repeatable: only agents whose presence names this device class train")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of the cohort draws")
    g.add_argument("--dp-noise", type=float, metavar="Z",
                   help="DP-FedAvg: Gaussian noise multiplier z (needs --dp-clip); each round's "
                        "metrics report epsilon")
    g.add_argument("--dp-clip", type=float, metavar="C", help="DP-FedAvg: L2 clip norm of updates")
    g.add_argument("--dp-delta", type=float, default=1e-5, help="delta of the reported epsilon")
    g.add_argument("--dp-seed", type=int, default=0,
                   help="seed of the DP noise: keep it secret in a real deployment")
    g.add_argument("--patience", type=int, metavar="P",
                   help="stop when test accuracy has not improved for P rounds")
    g.add_argument("--min-delta", type=float, default=0.0,
                   help="with --patience: a gain must exceed this to count")


def _round_config(args: argparse.Namespace, job: str, min_agents: int | None = None) -> RoundConfig:
    task = get_task(args.task)
    base = task.plan
    plan = TrainPlan(
        epochs=args.epochs if args.epochs is not None else base.epochs,
        batch_size=args.batch_size if args.batch_size is not None else base.batch_size,
        lr=args.lr if args.lr is not None else base.lr,
        seed=args.seed if args.seed is not None else base.seed,
        options=base.options,
    )
    if args.mu:
        plan = dataclasses.replace(plan, options={**plan.options, MU: args.mu})
    if args.local_layers is not None:
        plan = with_local_layers(plan, filter(None, args.local_layers.split(",")))
    # by default wait for enough agents to meet the quorum, min_replies and the aggregator
    floor = max(args.quorum or 1, args.min_replies, parse_aggregator(args.aggregator).min_updates)
    return RoundConfig(
        job=job,
        task=args.task,
        rounds=args.rounds,
        plan=plan,
        codec=args.codec,
        downlink=args.downlink,
        aggregator=args.aggregator,
        clip_norm=args.clip_norm,
        quorum=args.quorum,
        min_replies=args.min_replies,
        deadline_s=args.deadline,
        min_agents=args.min_agents or min_agents or floor,
        on_short_round=args.on_short_round,
        max_retries=args.max_retries,
        target_accuracy=args.target_accuracy,
        patience=args.patience,
        min_delta=args.min_delta,
        server_opt=args.server_opt,
        sample_fraction=args.sample_fraction,
        sample_count=args.sample_count,
        sample_policy=args.sample_policy,
        device_classes=frozenset(args.device_class) if args.device_class else None,
        sample_seed=args.sample_seed,
        dp_noise=args.dp_noise,
        dp_clip=args.dp_clip,
        dp_delta=args.dp_delta,
        dp_seed=args.dp_seed,
        evaluate=not args.no_eval,
        max_update_bytes=args.max_update_bytes,
        max_payload=args.max_payload,
    )


def _observers(args: argparse.Namespace, recorder: RunRecorder) -> Callable[[Action], None]:
    """The recorder, plus the Prometheus exporter when ``--metrics-port`` asks for one."""
    if args.metrics_port is None:
        return recorder
    from fedmq.prometheus import MetricsExporter, parse_listen

    host, port = parse_listen(args.metrics_port)
    exporter = MetricsExporter()
    bound = exporter.serve(host, port)
    print(f"prometheus metrics on http://{host}:{bound}/metrics")

    def both(action: Action) -> None:
        recorder(action)
        exporter(action)

    return both


def cmd_coordinator(args: argparse.Namespace) -> int:
    config = _signed_config(_round_config(args, args.job), args)
    run_dir = args.run_dir or Path("fedmq-runs") / args.job
    recorder = RunRecorder(config.rounds, jsonl=run_dir / "metrics.jsonl")
    try:
        node = build_coordinator(
            config,
            _connection(args, args.broker),
            data=_data(args),
            run_dir=run_dir,
            resume=args.resume,
            on_action=_observers(args, recorder),
        )
    except CheckpointError as exc:
        print(f"fedmq coordinator: {exc}", file=sys.stderr)
        return 2
    _stop_on_signals(node.stop)
    if args.resume:
        done = node.rounds.completed_rounds
        print(f"resuming run {node.rounds.run} after round {done} from {run_dir}")
    print(f"job {args.job}: waiting for {config.min_agents} agent(s) on {args.broker}")
    try:
        phase = node.run()
    except ConnectionRefusedError as exc:
        print(f"fedmq coordinator: {exc}", file=sys.stderr)
        return 3
    finally:
        recorder.close()
    summary = recorder.summary(node.rounds, job=args.job, run=node.rounds.run, task=args.task)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{phase.value}: {node.rounds.message}")
    return 0 if phase is Phase.DONE else 1


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
    from edge_agent.mqtt import run_fleet

    total = args.of or args.count
    conn = _connection(args, args.broker)
    nodes = [
        build_agent(
            _agent_settings(args, f"{args.id_prefix}{i}", i, total, not args.keep_running), conn
        )
        for i in range(args.first, args.first + args.count)
    ]

    def stop_all(_why: str) -> None:
        for n in nodes:
            n.stop()

    _stop_on_signals(stop_all)
    for thread in run_fleet(nodes):
        thread.join()
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
    p.add_argument("--job", default="demo")
    p.add_argument("--summary", type=Path, help="write the run summary as JSON here")
    p.add_argument("--run-dir", type=Path, help="checkpoint and metrics (default: a temp dir)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per agent process")
    p.add_argument("--metrics-port", help="serve Prometheus metrics on [HOST:]PORT")
    _add_task(p, default="digits")
    _add_rounds(p, rounds=10, deadline=30.0)
    add_web_demo_options(p)
    # the demo shows compressed updates: int8+zstd is lossless in accuracy on digits
    p.set_defaults(func=cmd_demo, codec="int8+zstd", username=None, password=None,
                   password_file=None, ca_file=None, mqtt311=False)

    p = sub.add_parser("coordinator", help="run a job's coordinator")
    p.add_argument("--job", required=True)
    p.add_argument("--run-dir", type=Path, help="checkpoint + metrics (default fedmq-runs/JOB)")
    p.add_argument("--resume", action="store_true", help="continue from the run dir's checkpoint")
    p.add_argument("--metrics-port", help="serve Prometheus metrics on [HOST:]PORT")
    _add_connection(p)
    _add_security(p, "coordinator")
    _add_task(p)
    _add_rounds(p, rounds=10, deadline=60.0)
    p.set_defaults(func=cmd_coordinator)

    add_agent_arguments(sub.add_parser("agent", help="run one agent"))
    p = sub.add_parser("agents", help="host several agents")
    add_device_options(p)
    p.add_argument("--count", type=int, required=True, help="agents in this process")
    p.add_argument("--first", type=int, default=0, help="first shard index")
    p.add_argument("--of", type=int, help="total shards (default: --count)")
    p.add_argument("--id-prefix", default="agent-")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="stay online after the run's final model",
    )
    p.set_defaults(func=cmd_agents)
    _add_watch_commands(sub)
    register_provision(sub)
    register_bench(sub)
    register_chaos(sub)
    register_web(sub)
    return top


def _add_watch_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("monitor", help="watch jobs live from their topics")
    p.add_argument("--job", help="only this job (default: every job on the broker)")
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
    return dataclasses.replace(config, signing_key=signing_key, agent_keys=agent_keys)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if command_of(argv) == "agent":  # the config file and thread budget are its own
        return agent_main(argv)
    try:
        argv = expand_bundle(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedmq: --bundle: {exc}", file=sys.stderr)
        return 2
    args = parser().parse_args(argv)
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
