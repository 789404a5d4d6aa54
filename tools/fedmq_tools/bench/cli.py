"""The ``fedmq bench ...`` and ``fedmq swarm`` subcommands, registered by :func:`register`.

Invariant: importing this module imports no benchmark and no torch; each
command imports what it runs, so ``fedmq agent`` on a device pays nothing for it.
Every bench prints its figures and writes them, with the command line and the
machine, to a JSON file (default under ``bench-results/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedmq.agent_cli import id_prefix, job_id
from fedmq_tools.bench.results import RESULTS_DIR, begin, write_results

DEFAULT_SCALE_COUNTS = "100,250,500,1000"


def _counts(value: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"want N[,N...], got {value!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"want positive counts, got {value!r}")
    return counts


def _finish(bench: str, begun: dict[str, Any], doc: dict[str, Any], out: Path, text: str) -> int:
    if text:
        print(text)
    path = write_results(out, bench, begun, doc)
    print(f"results: {path}")
    return 0


def cmd_w1(args: argparse.Namespace) -> int:
    from coordinator.config import SecAggPolicy
    from fedmq_tools.bench.w1 import W1Options, report, run_w1

    opts = W1Options(
        variant=args.variant,
        codec=args.codec,
        downlink_delta=args.downlink_delta,
        downlink=args.downlink,
        task=args.task,
        agents=args.agents,
        rounds=args.rounds,
        data_dir=args.data,
        broker=args.broker,
        deadline_s=args.deadline,
        timeout_s=args.timeout,
        reference=not args.no_reference,
        centralised=not args.no_centralised,
        ref_threads=args.ref_threads,
        repeat=args.repeat,
        secagg=SecAggPolicy(unmask_s=args.secagg_timeout) if args.secagg else None,
        drop_after_mask=args.secagg_drop,
    )
    begun = begin()
    doc = run_w1(opts)
    name = "w1" if args.variant == "iid" else "w1-noniid"
    tag = "secagg" if args.secagg else args.codec
    tag += f"-down-{args.downlink_delta}" if args.downlink_delta else ""
    tag += "-fp16" if args.downlink == "fp16" else ""
    out = args.out or RESULTS_DIR / f"{name}-{tag}.json".replace(":", "_")
    return _finish("w1", begun, doc, out, report(doc))


def cmd_downlink(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.downlink import DownlinkOptions, report, run_downlink

    opts = DownlinkOptions(
        task=args.task, agents=args.agents, partition=args.partition, rounds=args.rounds,
        codec=args.codec, deltas=tuple(args.downlink_delta or ("qsgd:2+zstd:9",)),
        late=args.late, data_dir=args.data, threads=args.threads,
    )
    begun = begin()
    doc = run_downlink(opts)
    out = args.out or RESULTS_DIR / f"downlink-{args.task}.json"
    return _finish("downlink", begun, doc, out, report(doc))


def cmd_secagg(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.secagg import SecAggBenchOptions, run_secagg_bench

    opts = SecAggBenchOptions(counts=tuple(args.counts), processes=args.processes,
                              rounds=args.rounds, task=args.task, data_dir=args.data,
                              degree=args.degree)
    begun = begin()
    doc = run_secagg_bench(opts)
    suffix = f"-k{args.degree}" if args.degree else ""
    return _finish("secagg", begun, doc, args.out or RESULTS_DIR / f"secagg{suffix}.json", "")


def cmd_personal(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.personal import PersonalOptions, report, run_personal

    opts = PersonalOptions(
        agents=args.agents,
        rounds=args.rounds,
        data_dir=args.data,
        finetune_epochs=args.finetune_epochs,
        mu=args.mu,
        threads=args.threads,
    )
    begun = begin()
    doc = run_personal(opts)
    return _finish("personal", begun, doc, args.out or RESULTS_DIR / "personal.json", report(doc))


def cmd_strategies(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.strategies import (
        DEFAULT_SERVER_OPTS,
        StrategiesOptions,
        report,
        run_strategies,
    )

    def given(values: list[Any] | None, default: tuple[Any, ...]) -> tuple[Any, ...]:
        """The repeated flag's values, without 'none'; the default if the flag is absent."""
        return default if values is None else tuple(v for v in values if v not in (None, "none"))

    opts = StrategiesOptions(
        variant=args.variant,
        agents=args.agents,
        rounds=args.rounds,
        task=args.task,
        data_dir=args.data,
        threads=args.threads,
        server_opts=given(args.server_opt, DEFAULT_SERVER_OPTS),
        mus=given(args.mu, (0.01,)),
        sample_fractions=given(args.sample_fraction, (0.5,)),
        dp_noises=given(args.dp_noise, (0.1, 1.0)),
        dp_clip=args.dp_clip,
        dp_delta=args.dp_delta,
    )
    begun = begin()
    doc = run_strategies(opts)
    name = f"strategies-{args.variant}"
    return _finish("strategies", begun, doc, args.out or RESULTS_DIR / f"{name}.json", report(doc))


def cmd_ingest(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.ingest import DEFAULT_CODECS, DEFAULT_TASKS, IngestOptions, run_ingest

    opts = IngestOptions(
        tasks=tuple(args.task or DEFAULT_TASKS),
        codecs=tuple(args.codec or DEFAULT_CODECS),
        modes=("pure", "broker") if args.mode == "both" else (args.mode,),
        updates=args.updates,
        data_dir=args.data,
    )
    begun = begin()
    doc = run_ingest(opts)
    return _finish("ingest", begun, doc, args.out or RESULTS_DIR / "ingest.json", "")


def cmd_workers(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.ingest import IngestOptions
    from fedmq_tools.bench.workers import run_workers

    opts = IngestOptions(data_dir=args.data)
    begun = begin()
    doc = run_workers(args.task, args.codec, args.updates, counts=tuple(args.workers),
                      batch=args.batch, opts=opts)
    return _finish("workers", begun, doc, args.out or RESULTS_DIR / "workers.json", "")


def cmd_scale(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.scale import ScaleOptions, run_scale

    brokers = tuple(args.broker.split(","))
    if args.sites and brokers != ("mosquitto",):
        raise SystemExit("--sites bridges private Mosquittos: it takes no other --broker")
    opts = ScaleOptions(
        counts=tuple(args.counts),
        processes=args.processes,
        rounds=args.rounds,
        deadline_s=args.deadline,
        task=args.task,
        data_dir=args.data,
        timeout_s=args.timeout,
        stop_on_failure=not args.keep_going,
        broker_config="\n".join(args.broker_config or ()),
        brokers=brokers,
        sites=args.sites,
    )
    begun = begin()
    doc = run_scale(opts)
    largest = doc["largest_passing_fleet"]
    text = f"largest fleet with all {opts.rounds} rounds on time: {largest or 'none'}"
    return _finish("scale", begun, doc, args.out or RESULTS_DIR / "scale.json", text)


def cmd_footprint(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.footprint import report, run_footprint

    begun = begin()
    doc = run_footprint(args.data)
    return _finish("footprint", begun, doc, args.out or RESULTS_DIR / "footprint.json",
                   report(doc))


def cmd_device(args: argparse.Namespace) -> int:
    import json
    import shlex

    from fedmq_tools.bench.device import report, run_emulated

    begun = begin()
    out = args.out or RESULTS_DIR / "device.json"
    run = run_emulated(shlex.split(args.agent_cmd), args.agent_data, args.data,
                       out.with_suffix(".logs"))
    doc: dict[str, Any] = {"label": args.label, "setup_s": args.setup_s, "run": run}
    if args.probe is not None:
        doc["probe"] = json.loads(args.probe.read_text())
    _finish("device", begun, doc, out, report(doc))
    final = run["rounds"][-1].get("accuracy") if run.get("rounds") else None
    if not run.get("completed") or final is None or final < args.min_accuracy:
        print(f"fedmq bench device: the run did not reach accuracy {args.min_accuracy}")
        return 1
    return 0


def _names(value: str | None) -> list[str] | None:
    return [v for v in value.split(",") if v] if value else None


def cmd_limits(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.limits import report, run_limits

    begun = begin()
    doc = run_limits(args.data, _names(args.profiles), _names(args.cases), args.rounds,
                     (args.out or RESULTS_DIR / "limits.json").with_suffix(".logs"))
    return _finish("limits", begun, doc, args.out or RESULTS_DIR / "limits.json", report(doc))


def cmd_swarm(args: argparse.Namespace) -> int:
    from fedmq.fleet_schedule import fleet_spec
    from fedmq_tools.bench.fleet import (
        FleetSpec,
        exit_code,
        report_line,
        run_in_process,
        run_processes,
    )

    spec = FleetSpec(
        broker=args.broker,
        job=args.job,
        task=args.task,
        count=args.count,
        first=args.first,
        total=args.of,
        id_prefix=args.id_prefix,
        partition=args.partition,
        data_dir=args.data,
        data_seed=args.data_seed,
        mqtt5=not args.mqtt311,
        keepalive_s=args.keepalive,
        exit_when_done=not args.keep_running,
        source_address=args.source_address,
        uneven=fleet_spec(args),
    )
    if args.processes > 1:
        return run_processes(spec, args.processes)
    stats = run_in_process(spec)
    print(report_line(spec, stats), flush=True)
    return exit_code(stats)


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help=f"results JSON (default: {RESULTS_DIR}/<bench>.json)")


def register(sub: Any) -> None:
    """Add ``bench`` (w1, ingest, scale, footprint) and ``swarm`` to fedmq's subparsers."""
    bench = sub.add_parser("bench", help="benchmarks: print figures, write them as JSON")
    which = bench.add_subparsers(dest="bench", required=True)
    _add_w1(which)
    _add_downlink(which)
    _add_strategies(which)
    _add_personal(which)
    _add_hetero(which)
    _add_ingest(which)
    _add_workers(which)
    _add_scale(which)
    _add_secagg(which)
    _add_footprint(which)
    _add_device(which)
    _add_limits(which)
    _add_swarm(sub)


def _add_w1(which: Any) -> None:
    p = which.add_parser("w1", help="Workload W1 over a real Mosquitto vs the in-process reference")
    p.add_argument("--variant", choices=("iid", "noniid"), default="iid")
    p.add_argument("--codec", default="none", help="update codec spec (default: none)")
    p.add_argument("--downlink-delta", metavar="SPEC",
                   help="send models as deltas with this codec (default: whole models)")
    p.add_argument("--downlink", choices=("fp32", "fp16"), default="fp32",
                   help="the broadcast model's dtype (the whole model's, too)")
    p.add_argument("--task", default="mnist-2nn")
    p.add_argument("--agents", type=int, default=20, help="agent processes (W1: 20)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    p.add_argument("--broker", help="use this broker instead of a private Mosquitto")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds per round")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many s")
    p.add_argument("--ref-threads", type=int, help="torch threads of the references")
    p.add_argument("--repeat", type=int, default=1, help="fedmq and reference runs each")
    p.add_argument("--no-reference", action="store_true", help="skip the in-process reference")
    p.add_argument("--no-centralised", action="store_true", help="skip the centralised baseline")
    p.add_argument("--secagg", action="store_true", help="every round through SecAgg")
    p.add_argument("--secagg-drop", type=float, default=0.0, metavar="F",
                   help="with --secagg: in even rounds, fraction F of the agents drop after "
                        "masking (their unmask answers are lost)")
    p.add_argument("--secagg-timeout", type=float, default=10.0, metavar="S",
                   help="with --secagg: seconds the unmask phase waits for the dropped")
    _add_out(p)
    p.set_defaults(func=cmd_w1)


def _add_downlink(which: Any) -> None:
    p = which.add_parser(
        "downlink", help="delta-coded models vs whole models, in process (bytes per agent)"
    )
    p.add_argument("--task", default="mnist-cnn")
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--partition", default="dirichlet:0.3")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--codec", default="int8+zstd", help="update codec of every row")
    p.add_argument("--downlink-delta", action="append", metavar="SPEC",
                   help="repeatable: a row with this delta codec (default: qsgd:2+zstd:9)")
    p.add_argument("--late", type=int, default=0, help="agents that join at round 2")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    _add_out(p)
    p.set_defaults(func=cmd_downlink)


def _add_personal(which: Any) -> None:
    p = which.add_parser(
        "personal", help="W1-noniid in process: FedAvg, fine-tuning, FedPer, FedProx per agent"
    )
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=1, help="local epochs on the final model")
    p.add_argument("--mu", type=float, default=0.01, help="FedProx's mu for its row")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    _add_out(p)
    p.set_defaults(func=cmd_personal)


def cmd_hetero(args: argparse.Namespace) -> int:
    from fedmq_tools.bench.hetero import HeteroOptions, one_blas_thread, report, run_hetero

    one_blas_thread()
    opts = HeteroOptions(
        agents=args.agents, task=args.task, data_dir=args.data, target=args.target,
        speeds=args.speeds, base_delay_s=args.base_delay, offline_fraction=args.offline_fraction,
        on_s=args.on_s, off_s=args.off_s, fleet_seed=args.fleet_seed, budget_s=args.budget,
        quorum_fraction=args.quorum_fraction, over_select=args.over_select,
        carry_late=args.carry_late, buffer_ks=tuple(args.buffer_k),
        max_staleness=args.max_staleness, deadline_s=args.deadline,
    )
    begun = begin()
    doc = run_hetero(opts)
    return _finish("hetero", begun, doc, args.out or RESULTS_DIR / "hetero.json", report(doc))


def _add_hetero(which: Any) -> None:
    from fedmq.fleet_schedule import add_fleet_flags

    p = which.add_parser(
        "hetero", help="uneven fleet (speed classes, agents going offline): sync FedAvg, "
                       "over-selection and carry-late, FedBuff; time to target, wasted updates"
    )
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--task", default="mnist-2nn")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    p.add_argument("--target", type=float, default=0.85, help="target test accuracy")
    add_fleet_flags(p)
    p.set_defaults(speeds=(1.0, 3.0, 10.0), base_delay=0.2, offline_fraction=0.2, on_s=8.0,
                   off_s=4.0)
    p.add_argument("--budget", type=float, default=40.0, help="wall-clock seconds per run")
    p.add_argument("--quorum-fraction", type=float, default=0.8)
    p.add_argument("--over-select", type=float, default=1.3)
    p.add_argument("--carry-late", type=int, default=2)
    p.add_argument("--buffer-k", type=int, nargs="+", default=[5, 10, 15], metavar="K")
    p.add_argument("--max-staleness", type=int, default=50)
    p.add_argument("--deadline", type=float, default=10.0, help="sync: seconds per round")
    _add_out(p)
    p.set_defaults(func=cmd_hetero)


def _number_or_none(value: str) -> float | None:
    if value == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a number or 'none', got {value!r}") from None


def _add_strategies(which: Any) -> None:
    p = which.add_parser(
        "strategies",
        help="W1 in process through the real round machine: server optimisers, FedProx, "
             "sampling, DP-FedAvg (accuracy and epsilon)",
    )
    p.add_argument("--variant", choices=("iid", "noniid"), default="noniid")
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--task", default="mnist-2nn")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    p.add_argument("--server-opt", action="append", metavar="SPEC",
                   help="repeatable: a row per server optimiser ('none' for no row; default: "
                        "fedavgm, fedadam, fedyogi, fedadagrad with their defaults)")
    p.add_argument("--mu", action="append", metavar="MU", type=_number_or_none,
                   help="repeatable: a FedProx row per mu ('none' for no row; default 0.01)")
    p.add_argument("--sample-fraction", action="append", metavar="F", type=_number_or_none,
                   help="repeatable: a row asking this fraction each round (default 0.5)")
    p.add_argument("--dp-noise", action="append", metavar="Z", type=_number_or_none,
                   help="repeatable: a DP-FedAvg row per noise multiplier (default 0.1 and 1)")
    p.add_argument("--dp-clip", type=float, default=1.0, help="DP rows' clip norm C")
    p.add_argument("--dp-delta", type=float, default=1e-5, help="DP rows' delta")
    _add_out(p)
    p.set_defaults(func=cmd_strategies)


def _add_ingest(which: Any) -> None:
    p = which.add_parser("ingest", help="coordinator updates/s, pure and through the broker")
    p.add_argument("--task", action="append", help="repeatable (default: mnist-2nn, mnist-cnn)")
    p.add_argument("--codec", action="append", help="repeatable codec spec (default: a set)")
    p.add_argument("--mode", choices=("pure", "broker", "both"), default="both")
    p.add_argument("--updates", type=int, help="updates per measurement (default: per task)")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    _add_out(p)
    p.set_defaults(func=cmd_ingest)


def _add_workers(which: Any) -> None:
    p = which.add_parser("workers", help="ingest through N ingest workers vs the coordinator")
    p.add_argument("--task", default="mnist-2nn")
    p.add_argument("--codec", default="none")
    p.add_argument("--updates", type=int, default=2000, help="updates per measurement")
    p.add_argument("--workers", type=_counts, default=_counts("1,2"),
                   help="worker counts after the coordinator alone (default 1,2)")
    p.add_argument("--batch", type=int, default=64, help="a worker's batch of updates")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    _add_out(p)
    p.set_defaults(func=cmd_workers)


def _add_scale(which: Any) -> None:
    p = which.add_parser("scale", help="the largest swarm whose rounds all meet their deadline")
    p.add_argument("--counts", type=_counts, default=_counts(DEFAULT_SCALE_COUNTS),
                   help=f"fleet sizes to try, smallest first (default {DEFAULT_SCALE_COUNTS})")
    p.add_argument("--processes", type=int, default=4, help="swarm processes per fleet")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--deadline", type=float, default=60.0, help="seconds per round")
    p.add_argument("--task", default="mnist-logreg", help="a task with a 'linear' model")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on a size after this")
    p.add_argument("--keep-going", action="store_true", help="try larger sizes after a failure")
    p.add_argument("--broker", default="mosquitto", metavar="KIND|URL[,...]",
                   help="the brokers every size runs on, side by side: a private mosquitto, "
                        "nats or rabbitmq, or the URL of a running broker; the first is the "
                        "reference of the round-time ratios (docs/BROKERS.md)")
    p.add_argument("--broker-config", action="append", metavar="LINE",
                   help="repeatable: a line appended to the private Mosquitto's config")
    p.add_argument("--sites", type=int, default=0,
                   help="spread agents over K site brokers bridged to a central one, each "
                        "with a site aggregator (docs/SCALE.md)")
    _add_out(p)
    p.set_defaults(func=cmd_scale)


def _add_secagg(which: Any) -> None:
    p = which.add_parser("secagg", help="bytes and time per round: SecAgg against plain FedAvg")
    p.add_argument("--counts", type=_counts, default=[20, 200], help="fleet sizes (default 20,200)")
    p.add_argument("--processes", type=int, default=4, help="swarm processes per fleet")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--task", default="mnist-logreg", help="a task with a 'linear' model")
    p.add_argument("--degree", type=int, help="SecAgg+ degree K (default: the complete graph)")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    _add_out(p)
    p.set_defaults(func=cmd_secagg)


def _add_footprint(which: Any) -> None:
    p = which.add_parser("footprint", help="agent RSS (idle, training), import time, disk")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    _add_out(p)
    p.set_defaults(func=cmd_footprint)


def _add_device(which: Any) -> None:
    p = which.add_parser("device", help="W1 with agent-0 behind a command (an emulated Pi)")
    p.add_argument("--agent-cmd", required=True,
                   help="how to run fedmq on the device, e.g. 'chroot ROOT /opt/fedmq/bin/fedmq'")
    p.add_argument("--agent-data", help="the MNIST directory as the device sees it")
    p.add_argument("--data", type=Path, help="the MNIST directory here")
    p.add_argument("--label", default="", help="what the device is, for the report")
    p.add_argument("--probe", type=Path, help="probe.py's JSON from the device, to include")
    p.add_argument("--setup-s", type=float, help="seconds the device's install took")
    p.add_argument("--min-accuracy", type=float, default=0.89,
                   help="fail below this final accuracy (W1's reference reaches 0.8996)")
    _add_out(p)
    p.set_defaults(func=cmd_device)


def _add_limits(which: Any) -> None:
    p = which.add_parser("limits", help="agents under device-sized memory and CPU (cgroups)")
    p.add_argument("--data", type=Path, help="MNIST directory (default: ../shared/data/mnist)")
    p.add_argument("--profiles", help="device profiles, e.g. pi-zero-2w,pi4-2gb (default: all)")
    p.add_argument("--cases", help="TRAINER/TASK pairs, e.g. numpy/mnist-2nn (default: all)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per case")
    _add_out(p)
    p.set_defaults(func=cmd_limits)


def _add_swarm(sub: Any) -> None:
    from fedmq.fleet_schedule import add_fleet_flags

    p = sub.add_parser("swarm", help="many simulated agents (numpy trainer) in few processes")
    p.add_argument("--broker", required=True, help="mqtt://host[:port]")
    p.add_argument("--mqtt311", action="store_true",
                   help="speak only MQTT 3.1.1 (by default MQTT 5, falling back to 3.1.1)")
    p.add_argument("--job", required=True, type=job_id)
    p.add_argument("--task", default="mnist-logreg", help="a task with a 'linear' model")
    p.add_argument("--data", type=Path, help="data directory (MNIST files)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--partition", help="iid | shards | dirichlet:ALPHA (default: the task's)")
    p.add_argument("--count", type=int, required=True, help="agents in all")
    p.add_argument("--processes", type=int, default=1, help="spread the agents over P processes")
    p.add_argument("--first", type=int, default=0, help="first shard index")
    p.add_argument("--of", type=int, help="total shards (default: first + count)")
    p.add_argument("--id-prefix", default="agent-", type=id_prefix)
    p.add_argument("--keepalive", type=int, default=60, help="MQTT keepalive seconds")
    p.add_argument("--keep-running", action="store_true", help="stay online after the run")
    p.add_argument("--source-address", default="", metavar="IP",
                   help="connect from this local address (e.g. 127.0.0.2): each has its own "
                        "ephemeral port range, about 28,000 connections")
    add_fleet_flags(p)
    p.set_defaults(func=cmd_swarm)
