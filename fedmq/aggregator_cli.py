"""``fedmq aggregator``: a site aggregator between a site broker and the central one.

Run it beside the site's Mosquitto, which a bridge joins to the central broker
(docs/SCALE.md). Give it the same round flags as the coordinator (aggregator,
clipping, DP, update size limit): it admits and sums exactly what the coordinator
would, and sends the coordinator one partial aggregate per round.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from coordinator.site import CLOSE_SHARE, SiteAggregator
from coordinator.site_mqtt import SiteNode
from fedmq.agent_cli import add_task, stop_on_signals
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
