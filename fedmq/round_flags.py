"""The coordinator's round flags and the :class:`RoundConfig` they build.

Shared by ``fedmq coordinator`` (:mod:`fedmq.cli`) and ``fedmq demo``
(:mod:`fedmq.demo`), so both accept the same rules and build them the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable

from coordinator import Action, RoundConfig, parse_aggregator
from coordinator.config import COHORT_BY, DEFAULT_MAX_UPDATE_BYTES, SAMPLE_POLICIES, SecAggPolicy
from coordinator.optimisers import SERVER_OPT_HELP, parse_server_opt
from coordinator.staleness import BufferConfig
from coordinator.strategy import AGGREGATOR_HELP
from edge_agent.personal import with_local_layers
from edge_agent.proximal import MU
from fedmq.progress import RunRecorder
from fedmq.tasks import get_task
from protocol import CODECS, TrainPlan, check_codec
from protocol.compress import DOWNLINKS


def _codec(value: str) -> str:
    try:
        return check_codec(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _downlink_delta(value: str) -> str:
    """A codec spec, or ``off`` (kept, so the demo can tell it from no flag at all)."""
    return value if value == "off" else _codec(value)


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


def byte_size(value: str) -> int:
    """Bytes from ``131072``, ``128k`` or ``1m`` (binary units, as brokers count)."""
    number = value.strip().lower().rstrip("ib")
    digits = number.rstrip("kmg")
    unit = number[len(digits):]
    try:
        return int(float(digits) * _UNITS[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (try 131072, 128k, 1m)") from None


def add_round_flags(p: argparse.ArgumentParser, rounds: int, deadline: float) -> None:
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
    g.add_argument(
        "--downlink-delta", type=_downlink_delta, metavar="SPEC",
        help="send each new global model as a delta from the last with this codec, e.g. "
             "qsgd:2+zstd:9; the whole model stays retained for newcomers (docs/CODECS.md, "
             "docs/PROTOCOL.md section 15; 'off' or by default: the whole model every round)",
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
    g.add_argument("--max-update-bytes", type=byte_size, default=DEFAULT_MAX_UPDATE_BYTES,
                   help="reject larger updates (e.g. 64m)")
    g.add_argument("--max-inbox-bytes", type=byte_size, default=256 * 1024 * 1024,
                   help="drop (and count) messages beyond this many bytes waiting to be "
                        "validated (e.g. 256m)")
    g.add_argument("--max-samples", type=int, default=1_000_000,
                   help="reject updates that claim more local samples: their FedAvg weight "
                        "would swamp the rest (docs/SECURITY.md)")
    g.add_argument("--max-payload", type=byte_size, default=0,
                   help="the broker's payload cap, e.g. 128k for AWS IoT Core: larger "
                        "models and updates travel as chunks (default: no cap)")
    _add_strategy(p)
    _add_secagg(p)


def _add_secagg(p: argparse.ArgumentParser) -> None:
    """Secure aggregation (docs/PROTOCOL.md §14, docs/SECURITY.md)."""
    g = p.add_argument_group("secure aggregation (docs/SECURITY.md)")
    g.add_argument("--secagg", action="store_true",
                   help="SecAgg: the coordinator learns only the sum of the updates; needs "
                        "--aggregator fedavg, --codec none and no DP")
    g.add_argument("--secagg-degree", type=int, metavar="K",
                   help="SecAgg+: each agent masks with K (even) random neighbours, not all")
    g.add_argument("--secagg-threshold", type=float, default=0.5, metavar="F",
                   help="more than this fraction of each neighbourhood must answer to unmask "
                        "(default 0.5: a majority)")
    g.add_argument("--secagg-clip", type=float, default=1.0, metavar="C",
                   help="the declared range: every delta coordinate is clipped to [-C, C]")
    g.add_argument("--secagg-ring-bits", type=int, choices=(32, 64), default=32,
                   help="the ring 2^bits: 32 keeps masked inputs the size of float32 updates")
    g.add_argument("--secagg-timeout", type=float, default=10.0, metavar="S",
                   help="seconds the keys, shares and unmask phases each stay open")


def _secagg_policy(args: argparse.Namespace) -> SecAggPolicy | None:
    if not args.secagg:
        return None
    t = args.secagg_timeout
    return SecAggPolicy(ring_bits=args.secagg_ring_bits, clip=args.secagg_clip,
                        degree=args.secagg_degree, threshold=args.secagg_threshold,
                        keys_s=t, shares_s=t, unmask_s=t)


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
    g.add_argument("--cohort-by", choices=COHORT_BY, default="name",
                   help="announce a sampled cohort by name (a list of ids, exact size) or by "
                        "hash (with --sample-fraction: one threshold each agent checks, the "
                        "same size for any fleet; the cohort size is binomial around F*N)")
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


def add_mode_flags(p: argparse.ArgumentParser) -> None:
    """The coordinator's mode: synchronous rounds (default) or FedBuff (docs/STRATEGIES.md)."""
    g = p.add_argument_group("mode (docs/PROTOCOL.md section 13)")
    g.add_argument("--mode", choices=("sync", "fedbuff"), default="sync",
                   help="sync: rounds at quorum/deadline; fedbuff: buffered asynchronous")
    g.add_argument("--buffer-k", type=int, default=10, metavar="K",
                   help="fedbuff: accepted updates per server step")
    g.add_argument("--max-staleness", type=int, default=5, metavar="S",
                   help="fedbuff: versions an update's base may lag; more is rejected as stale")
    g.add_argument("--concurrency", type=int, metavar="C",
                   help="fedbuff: agents training at once (default: every agent online)")
    g.add_argument("--staleness", default="sqrt", metavar="SPEC",
                   help="staleness weight (fedbuff, and sync with --carry-late): "
                        "sqrt (1/sqrt(1+tau)), const, poly:A")
    g.add_argument("--over-select", type=float, metavar="F",
                   help="sync: ask ceil(F * quorum) agents (e.g. 1.3), close at --quorum; "
                        "the rest are late (docs/STRATEGIES.md)")
    g.add_argument("--carry-late", type=int, default=0, metavar="L",
                   help="sync: carry updates up to L rounds late into the next round, "
                        "weighted by --staleness, instead of rejecting them as stale")


def buffer_config(args: argparse.Namespace) -> BufferConfig | None:
    """The FedBuff settings ``--mode fedbuff`` asks for, or None for synchronous rounds."""
    if args.mode != "fedbuff":
        return None
    try:
        return BufferConfig(k=args.buffer_k, max_staleness=args.max_staleness,
                            concurrency=args.concurrency, staleness=args.staleness)
    except ValueError as exc:
        raise SystemExit(f"fedmq: {exc}") from None


def round_config(args: argparse.Namespace, job: str, min_agents: int | None = None) -> RoundConfig:
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
        downlink_delta=None if args.downlink_delta in (None, "off") else args.downlink_delta,
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
        cohort_by=args.cohort_by,
        device_classes=frozenset(args.device_class) if args.device_class else None,
        sample_seed=args.sample_seed,
        dp_noise=args.dp_noise,
        dp_clip=args.dp_clip,
        dp_delta=args.dp_delta,
        dp_seed=args.dp_seed,
        evaluate=not args.no_eval,
        max_update_bytes=args.max_update_bytes,
        max_samples=args.max_samples,
        max_inbox_bytes=args.max_inbox_bytes,
        max_payload=args.max_payload,
        secagg=_secagg_policy(args),
        over_select=getattr(args, "over_select", None),
        carry_late=getattr(args, "carry_late", 0),
        late_staleness=getattr(args, "staleness", "sqrt"),
    )


def observers(args: argparse.Namespace, recorder: RunRecorder) -> Callable[[Action], None]:
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
