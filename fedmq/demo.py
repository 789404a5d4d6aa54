"""``fedmq demo``: a private Mosquitto, a coordinator here, N agents in a child process.

The agents run in their own OS process, each with its own MQTT connection, so
everything between them and the coordinator crosses a real broker.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from fedmq.broker import BrokerError, LocalBroker
from fedmq.fleet_schedule import fleet_argv
from fedmq.launch import Connection, build_coordinator
from fedmq.progress import RunRecorder, human_bytes, write_summary
from fedmq.round_flags import observers, round_config
from protocol import Phase
from transport.connection import redact
from transport.link import PacketTooLargeError

if TYPE_CHECKING:
    from fedmq.web.demo import WebDemo

#: the demo's update codec: int8+zstd is lossless in accuracy on digits (none under --secagg)
DEMO_CODEC = "int8+zstd"
#: the demo's delta-coded models: qsgd:2+zstd:9 keeps its accuracy on digits (docs/CODECS.md);
#: whole models under --secagg, whose rounds were not measured with deltas
DEMO_DOWNLINK_DELTA = "qsgd:2+zstd:9"
#: how long the agents get to go offline after the final model
AGENTS_EXIT_TIMEOUT_S = 30.0


def agents_command(
    args: argparse.Namespace, broker_url: str, total: int | None = None
) -> list[str]:
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
        "--of",
        str(total or args.agents),
        "--threads",
        str(args.threads),
        "--data-seed",
        str(args.data_seed),
    ]
    if args.data is not None:
        cmd += ["--data", str(args.data)]
    if args.partition:
        cmd += ["--partition", args.partition]
    if args.mqtt311:
        cmd.append("--mqtt311")
    return cmd + fleet_argv(args)  # --speeds and the rest: fedmq/fleet_schedule.py


def run_demo(args: argparse.Namespace) -> int:
    from fedmq.agent_cli import UNSIGNED_NOTICE
    from fedmq.agent_cli import connection as _connection
    from fedmq.agent_cli import data_config as _data
    from fedmq.agent_cli import stop_on_signals as _stop_on_signals

    web = _web_demo(args)
    browsers = web.browser_agents if web is not None else 0
    with ExitStack() as stack:
        if args.broker:
            broker_url, where = args.broker, redact(args.broker)
        else:
            try:
                broker = stack.enter_context(LocalBroker(**web.broker_options() if web else {}))
            except BrokerError as exc:
                print(f"fedmq demo: {exc}", file=sys.stderr)
                return 2
            broker_url, where = broker.url, f"{broker.url} (private mosquitto, pid {broker.pid})"
            if web is not None:  # closed before the broker stops
                stack.callback(web.close)
        run_dir = args.run_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run_dir.mkdir(parents=True, exist_ok=True)
        _default_codecs(args)
        config = round_config(args, args.job, min_agents=args.agents + browsers)
        print(
            f"fedmq demo: {args.agents} agents, task {args.task}, {config.rounds} rounds, "
            f"broker {where}"
        )
        print(UNSIGNED_NOTICE + ("" if config.secagg is None else "\nsecagg: the coordinator "
                                 "sees only the sum of the updates (docs/SECURITY.md)"))
        print(
            f"watch it: fedmq monitor --broker {redact(broker_url)} --job {args.job}   or   "
            f"mosquitto_sub -p {broker_url.rsplit(':', 1)[-1]} -v -t 'fedmq/v1/#'"
        )
        recorder = RunRecorder(config.rounds, jsonl=run_dir / "metrics.jsonl")
        conn: Connection = _connection(args, broker_url)
        observe = observers(args, recorder)
        if web is not None:
            observe = web.observing(observe)
        node = build_coordinator(config, conn, data=_data(args), run_dir=run_dir, on_action=observe)
        _stop_on_signals(node.stop)
        if web is not None:
            web.start(broker, args.agents, _data(args), run_dir, stop=node.stop)
        # Only the end of the run lets agents exit by themselves; after a stop they would wait.
        stack.callback(_reap, _start_agents(
            agents_command(args, broker_url, args.agents + browsers), run_dir / "agents.log",
            node.stop), lambda: not node.rounds.ended)
        try:
            phase = node.run()
        except (ConnectionRefusedError, PacketTooLargeError) as exc:
            print(f"fedmq demo: {exc}", file=sys.stderr)
            return 3
        finally:
            recorder.close()
        summary = recorder.summary(
            node.rounds, job=args.job, run=node.rounds.run, task=args.task, agents=args.agents
        )
        summary.update(web.summary() if web is not None else {})
        _print_summary(summary, node.rounds.message)
        write_summary(run_dir / "summary.json", summary)
        if args.summary:
            write_summary(args.summary, summary)
            print(f"  summary        {args.summary}")
        if args.run_dir:
            print(f"  plots          fedmq report {args.run_dir}")
        return 0 if phase is Phase.DONE else 1
    return 1


def _web_demo(args: argparse.Namespace) -> WebDemo | None:
    """The demo's browser side (``--web``, ``--browser-agents``), or None."""
    if not (args.web or args.browser_agents):
        return None
    from fedmq.web.demo import WebDemo

    return WebDemo(args)


def _start_agents(
    cmd: list[str], log: Path, stop: Callable[[str], object]
) -> subprocess.Popen[bytes]:
    """The agents' process; the run stops if it fails."""
    agents_log = log.open("wb")
    agents = subprocess.Popen(cmd, stdout=agents_log, stderr=subprocess.STDOUT)

    def watch_agents() -> None:
        code = agents.wait()
        if code != 0:
            stop(f"the agents process exited with code {code}; see {agents_log.name}")

    threading.Thread(target=watch_agents, daemon=True).start()
    return agents


def _default_codecs(args: argparse.Namespace) -> None:
    """The demo's codecs both ways unless given; SecAgg sends masked fixed-point vectors,
    never a codec's, and its rounds take whole models."""
    args.codec = args.codec or ("none" if args.secagg else DEMO_CODEC)
    args.downlink_delta = args.downlink_delta or (None if args.secagg else DEMO_DOWNLINK_DELTA)


def _reap(proc: subprocess.Popen[bytes], at_once: Callable[[], bool]) -> None:
    """Let the agents exit after the final model (or, ``at_once()``, stop them now)."""
    try:
        proc.wait(timeout=0 if at_once() else AGENTS_EXIT_TIMEOUT_S)
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
    print(f"  payload bytes  up {human_bytes(up)}{_vs_raw(s.get('compression_ratio_up'))}, "
          f"down {human_bytes(down)}{_vs_raw(s.get('compression_ratio_down'))}")
    both, per_agent = s.get("compression_ratio_both"), s.get("bytes_down_per_agent_round")
    if isinstance(both, float) and isinstance(per_agent, int):
        print(f"  both ways      {both:.1f}x smaller than raw float32; "
              f"{human_bytes(per_agent)} down per agent per round")
    kinds = s.get("updates_by_kind")
    if isinstance(kinds, dict):
        print("  by kind        " + ", ".join(f"{kind} {n}" for kind, n in kinds.items()))


def _vs_raw(ratio: object) -> str:
    if not isinstance(ratio, float):
        return ""
    return f" ({ratio:.1f}x smaller than raw float32)" if ratio > 1.05 else " (raw float32)"
