"""``fedmq aggregator`` and ``fedmq coordinator --ingest-worker``: partial sums for a coordinator.

A site aggregator runs beside the site's Mosquitto, which a bridge joins to the
central broker; an ingest worker shares the central broker's update topics with
the other workers through an MQTT 5 shared subscription (docs/SCALE.md). Give
either the same round flags as the coordinator (aggregator, clipping, DP, update
size limit): it admits and sums exactly what the coordinator would, and sends the
coordinator partial aggregates.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from coordinator.site import BATCH_UPDATES, BATCH_WAIT_S, CLOSE_SHARE, Batching, SiteAggregator
from coordinator.site_mqtt import SiteNode
from fedmq.agent_cli import add_task, stop_on_signals
from fedmq.launch import Connection
from fedmq.round_flags import add_round_flags, round_config
from transport.connection import BrokerURL


def register_aggregator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("aggregator", help="a site aggregator beside a site broker (SCALE.md)")
    p.add_argument("--site", required=True, help="this site's id (its partial topic, signer)")
    p.add_argument("--local", required=True, help="the site broker, e.g. mqtt://127.0.0.1:1883")
    p.add_argument("--upstream", required=True, help="the central broker the partials go to")
    p.add_argument("--job", required=True)
    p.add_argument("--close-share", type=float, default=CLOSE_SHARE,
                   help="send at this share of the announced deadline if agents are missing "
                        f"(default {CLOSE_SHARE})")
    p.add_argument("--signing-key", type=Path, help="the site's Ed25519 key (secure profile)")
    p.add_argument("--coordinator-key", type=Path,
                   help="the coordinator's public key: refuse models it did not sign")
    p.add_argument("--agent-keys", type=Path,
                   help="directory of AGENT_ID.pub: accept only updates signed by these agents")
    p.add_argument("--mqtt311", action="store_true", help="speak MQTT 3.1.1 to both brokers")
    add_task(p)
    add_round_flags(p, rounds=10, deadline=60.0)
    p.set_defaults(func=cmd_aggregator)


def cmd_aggregator(args: argparse.Namespace) -> int:
    from fedmq.bundle import load_agent_keys, load_signing_key, load_verify_key

    config = round_config(args, args.job)
    if args.agent_keys:
        config = dataclasses.replace(config, agent_keys=load_agent_keys(args.agent_keys))
    core = SiteAggregator(
        config, site=args.site, close_share=args.close_share,
        signing_key=load_signing_key(args.signing_key) if args.signing_key else None,
        coordinator_key=load_verify_key(args.coordinator_key) if args.coordinator_key else None,
    )
    node = SiteNode(core, BrokerURL.parse(args.local), BrokerURL.parse(args.upstream),
                    mqtt5=not args.mqtt311)
    stop_on_signals(node.stop)
    print(f"site {args.site}: job {args.job}, agents on {args.local}, partials to "
          f"{args.upstream}", file=sys.stderr)
    node.run()
    print(f"site {args.site}: {len(node.sent)} partial aggregates sent", file=sys.stderr)
    return 0


def add_ingest_flags(p: argparse.ArgumentParser) -> None:
    """The coordinator's flags for spreading ingest over worker processes."""
    g = p.add_argument_group("ingest workers (docs/SCALE.md)")
    g.add_argument("--ingest-worker", metavar="ID",
                   help="run as ingest worker ID instead: take a share of the updates through "
                        "the shared subscription $share/fedmq-JOB/..., send partial sums")
    g.add_argument("--updates-from-workers", action="store_true",
                   help="this coordinator reads only the ingest workers' partial sums, "
                        "not the updates")
    g.add_argument("--batch-updates", type=int, default=BATCH_UPDATES,
                   help=f"a worker sends every N updates (default {BATCH_UPDATES})")
    g.add_argument("--batch-wait", type=float, default=BATCH_WAIT_S,
                   help="or this many seconds after the first one not yet sent "
                        f"(default {BATCH_WAIT_S})")
    g.add_argument("--coordinator-key", type=Path,
                   help="a worker: the coordinator's public key, to refuse models and "
                        "verdicts it did not sign")


def run_ingest_worker(args: argparse.Namespace, conn: Connection) -> int:
    """``fedmq coordinator --ingest-worker ID``: serve until the run's final model."""
    from fedmq.bundle import load_agent_keys, load_signing_key, load_verify_key

    config = round_config(args, args.job)
    if args.agent_keys:
        config = dataclasses.replace(config, agent_keys=load_agent_keys(args.agent_keys))
    core = SiteAggregator(
        config, site=args.ingest_worker, batching=Batching(args.batch_updates, args.batch_wait),
        signing_key=load_signing_key(args.signing_key) if args.signing_key else None,
        coordinator_key=load_verify_key(args.coordinator_key) if args.coordinator_key else None,
    )
    node = SiteNode(core, conn.broker, conn.broker, mqtt5=conn.mqtt5,
                    shared_group=shared_group(args.job))
    stop_on_signals(node.stop)
    print(f"ingest worker {args.ingest_worker}: job {args.job} on {conn.broker}",
          file=sys.stderr)
    node.run()
    print(f"ingest worker {args.ingest_worker}: {len(node.sent)} partial aggregates sent",
          file=sys.stderr)
    return 0


def shared_group(job: str) -> str:
    """The shared-subscription group a job's ingest workers join."""
    return f"fedmq-{job}"
