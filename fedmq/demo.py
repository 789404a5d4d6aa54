"""``fedmq demo``: a private Mosquitto, a coordinator here, N agents in a child process.

The agents run in their own OS process, each with its own MQTT connection, so
everything between them and the coordinator crosses a real broker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

from fedmq.broker import BrokerError, LocalBroker
from fedmq.launch import Connection, build_coordinator
from fedmq.progress import RunRecorder, human_bytes
from fedmq.round_flags import observers, round_config
from protocol import Phase

#: the demo's update codec: int8+zstd is lossless in accuracy on digits (none under --secagg)
DEMO_CODEC = "int8+zstd"
#: how long the agents get to go offline after the final model
AGENTS_EXIT_TIMEOUT_S = 30.0


def agents_command(args: argparse.Namespace, broker_url: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "fedmq",
        "agents",
        "--broker",
        broker_url,
        "--job",
        args.job,
        "--task",
        args.task,
        "--count",
        str(args.agents),
        "--threads",
        str(args.threads),
        "--data-seed",
        str(args.data_seed),
    ]
    if args.data is not None:
        cmd += ["--data", str(args.data)]
    if args.partition:
        cmd += ["--partition", args.partition]
    return cmd


def run_demo(args: argparse.Namespace) -> int:
    from fedmq.agent_cli import UNSIGNED_NOTICE
    from fedmq.agent_cli import connection as _connection
    from fedmq.agent_cli import data_config as _data
    from fedmq.agent_cli import stop_on_signals as _stop_on_signals

    with ExitStack() as stack:
        if args.broker:
            broker_url, where = args.broker, args.broker
        else:
            try:
                broker = stack.enter_context(LocalBroker())
            except BrokerError as exc:
                print(f"fedmq demo: {exc}", file=sys.stderr)
                return 2
            broker_url, where = broker.url, f"{broker.url} (private mosquitto, pid {broker.pid})"
        run_dir = args.run_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run_dir.mkdir(parents=True, exist_ok=True)
        if args.codec is None:  # SecAgg sends masked fixed-point vectors, never a codec's
            args.codec = "none" if args.secagg else DEMO_CODEC
        config = round_config(args, args.job, min_agents=args.agents)
        print(
            f"fedmq demo: {args.agents} agents, task {args.task}, {config.rounds} rounds, "
            f"broker {where}"
        )
        print(UNSIGNED_NOTICE)
        if config.secagg is not None:
            print("secagg: the coordinator sees only the sum of the updates (docs/SECURITY.md)")
        print(
            f"watch it: fedmq monitor --broker {broker_url} --job {args.job}   or   "
            f"mosquitto_sub -p {broker_url.rsplit(':', 1)[-1]} -v -t 'fedmq/v1/#'"
        )
        recorder = RunRecorder(config.rounds, jsonl=run_dir / "metrics.jsonl")
        conn: Connection = _connection(args, broker_url)
        node = build_coordinator(
            config, conn, data=_data(args), run_dir=run_dir, on_action=observers(args, recorder)
        )
        _stop_on_signals(node.stop)
        agents_log = (run_dir / "agents.log").open("wb")
        agents = subprocess.Popen(
            agents_command(args, broker_url), stdout=agents_log, stderr=subprocess.STDOUT
        )
        stack.callback(_reap, agents)

        def watch_agents() -> None:
            code = agents.wait()
            if code != 0:
                node.stop(f"the agents process exited with code {code}; see {agents_log.name}")

        threading.Thread(target=watch_agents, daemon=True).start()
        try:
            phase = node.run()
        finally:
            recorder.close()
        summary = recorder.summary(
            node.rounds, job=args.job, run=node.rounds.run, task=args.task, agents=args.agents
        )
        _print_summary(summary, node.rounds.message)
        summary_json = json.dumps(summary, indent=2) + "\n"
        (run_dir / "summary.json").write_text(summary_json)
        if args.summary:
            args.summary.write_text(summary_json)
            print(f"  summary        {args.summary}")
        if args.run_dir:
            print(f"  plots          fedmq report {args.run_dir}")
        return 0 if phase is Phase.DONE else 1
    return 1


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=AGENTS_EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=10)


def _print_summary(s: dict[str, object], message: str) -> None:
    acc = s["final_accuracy"]
    print(f"\n{s['phase']}: {message}")
    print(f"  final accuracy {acc:.4f}" if isinstance(acc, float) else "  final accuracy -")
    print(f"  rounds         {s['rounds_completed']} in {s['wall_s']:.1f} s")
    print(f"  updates        {s['updates_accepted']} accepted, {s['updates_rejected']} rejected")
    up, down = s["bytes_up"], s["bytes_down"]
    assert isinstance(up, int) and isinstance(down, int)
    ratio = s.get("compression_ratio_up")
    if not isinstance(ratio, float):
        vs_raw = ""
    elif ratio > 1.05:
        vs_raw = f" ({ratio:.1f}x smaller than raw float32)"
    else:
        vs_raw = " (raw float32: --codec none)"
    print(f"  payload bytes  up {human_bytes(up)}{vs_raw}, down {human_bytes(down)}")
