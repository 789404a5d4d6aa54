"""Partial sums over real Mosquittos: bridged site brokers, and ingest workers.

Each site's Mosquitto is bridged to the central one by Mosquitto's own bridge
(``connection`` / ``address`` / ``topic``: :func:`fedmq.broker.site_bridge`, docs/SCALE.md): the
model comes down retained, presence goes up, updates stay at the site. A site
aggregator sums its agents' updates and sends the coordinator one partial per round.
Ingest workers share one broker's update topics through an MQTT 5 shared subscription
and send the coordinator batches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from harness import TIMEOUT_S, CoordinatorThread, TopicWatcher, agent_fleet, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import Action, PartialMerged, RoundConfig
from coordinator.site import Batching, SiteAggregator
from coordinator.site_mqtt import SiteNode
from fedmq.aggregator_cli import shared_group
from fedmq.broker import LocalBroker, site_bridge
from fedmq.tasks import get_task
from protocol import ClosedBy, Presence, Topics, encode_presence
from tests.needs import require_mosquitto
from transport.connection import BrokerURL

pytestmark = pytest.mark.integration

DIGITS = get_task("digits")
PER_SITE = 5


def config(job: str, **overrides: object) -> RoundConfig:
    settings: dict[str, object] = {"job": job, "task": "digits", "rounds": 3,
                                   "plan": DIGITS.plan, "deadline_s": 30.0,
                                   "min_agents": 2 * PER_SITE, "evaluate": False}
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def publish_retained(url: str, topic: str, payload: bytes) -> None:
    """Publish one retained message as an outsider would, and wait until the broker has it."""
    broker = BrokerURL.parse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


class SiteThread:
    """A site aggregator (or, with ``batching``, an ingest worker) on a thread."""

    def __init__(self, cfg: RoundConfig, site: str, local: str, upstream: str,
                 *, close_share: float = 0.8, batching: Batching | None = None) -> None:
        core = SiteAggregator(cfg, site=site, close_share=close_share, batching=batching)
        group = shared_group(cfg.job) if batching is not None else None
        self.node = SiteNode(core, BrokerURL.parse(local), BrokerURL.parse(upstream),
                             shared_group=group)
        self.thread = threading.Thread(target=self.node.run, daemon=True)
        self.thread.start()
        if not self.node.subscribed.wait(TIMEOUT_S):
            raise TimeoutError(f"site {site} did not subscribe")

    def stop(self) -> None:
        self.node.stop("test")
        self.thread.join(TIMEOUT_S)


@contextmanager
def two_sites(job: str) -> Iterator[tuple[LocalBroker, LocalBroker, LocalBroker]]:
    require_mosquitto()
    with ExitStack() as stack:
        central = stack.enter_context(LocalBroker())
        address = f"127.0.0.1:{central.port}"
        sites = [stack.enter_context(LocalBroker(extra_config=site_bridge(s, address, job)))
                 for s in ("site-a", "site-b")]
        yield central, sites[0], sites[1]


@pytest.mark.parametrize("downlink_delta", [None, "qsgd:2+zstd"])
def test_two_bridged_sites_reproduce_the_flat_runs_weights_exactly(
    broker: LocalBroker, tmp_path: Path, downlink_delta: str | None
) -> None:
    # and with delta-coded models, which reach the sites' agents through the bridge too
    flat_cfg = config("flat", downlink_delta=downlink_delta)
    flat = CoordinatorThread(flat_cfg, broker.url, tmp_path / "flat")
    with agent_fleet(broker.url, "flat", "digits", 2 * PER_SITE):
        flat.start().join()

    job = "sites"
    with two_sites(job) as (central, site_a, site_b):
        cfg = config(job, downlink_delta=downlink_delta)
        merged: list[PartialMerged] = []

        def seen(action: Action) -> None:
            if isinstance(action, PartialMerged):
                merged.append(action)

        aggregators = [SiteThread(cfg, "site-a", site_a.url, central.url),
                       SiteThread(cfg, "site-b", site_b.url, central.url)]
        coord = CoordinatorThread(cfg, central.url, tmp_path / "sites", on_action=seen)
        with agent_fleet(site_a.url, job, "digits", PER_SITE, total=2 * PER_SITE), \
                agent_fleet(site_b.url, job, "digits", PER_SITE, first=PER_SITE,
                            total=2 * PER_SITE):
            coord.start().join()
        for site in aggregators:
            site.stop()

    assert [m.closed_by for m in coord.closed] == [ClosedBy.QUORUM] * 3
    assert all(m.accepted == 2 * PER_SITE for m in coord.closed)
    assert len(merged) == 6 and {m.aggregator for m in merged} == {"site-a", "site-b"}
    assert all(m.contributors == PER_SITE for m in merged)
    for name, flat_weights in flat.node.rounds.weights.items():
        assert coord.node.rounds.weights[name].tobytes() == flat_weights.tobytes()
    # what reached the coordinator: two partials a round; the updates stayed at the sites
    assert all(m.bytes_up > 0 for m in coord.closed)
    assert [len(a.node.sent) for a in aggregators] == [3, 3]


def test_a_dead_site_lets_the_round_close_at_its_deadline_with_the_other(tmp_path: Path) -> None:
    job = "deadsite"
    with two_sites(job) as (central, site_a, site_b):
        cfg = config(job, rounds=1, deadline_s=4.0, min_replies=PER_SITE,
                     min_agents=2 * PER_SITE + 1)  # all ten and the silent one
        merged = threading.Event()
        coord = CoordinatorThread(
            cfg, central.url, tmp_path,
            on_action=lambda a: merged.set() if isinstance(a, PartialMerged) else None)
        alive = SiteThread(cfg, "site-a", site_a.url, central.url)
        # site-b waits for the whole deadline: its cohort holds an agent that never answers
        doomed = SiteThread(cfg, "site-b", site_b.url, central.url, close_share=1.0)
        # the coordinator counts live presence only (PROTOCOL.md §16.5): it listens (its
        # roll call is out) before the silent agent announces itself
        watcher = TopicWatcher(central.url, job)
        coord.start()
        watcher.wait_for(lambda: bool(watcher.on("/rollcall")))
        watcher.close()
        silent = Presence(agent="silent", online=True, samples=1)
        publish_retained(site_b.url, Topics(job).presence("silent"), encode_presence(silent))
        wait_until(lambda: "silent" in doomed.node.core.agents_online, doomed.node.progress,
                   TIMEOUT_S)
        with agent_fleet(site_a.url, job, "digits", PER_SITE, total=2 * PER_SITE), \
                agent_fleet(site_b.url, job, "digits", PER_SITE, first=PER_SITE,
                            total=2 * PER_SITE):
            assert merged.wait(TIMEOUT_S)
            doomed.stop()  # mid-round: site-b has its agents' updates but sent nothing
            coord.join()
        alive.stop()
    (closed,) = coord.closed
    assert closed.closed_by is ClosedBy.DEADLINE
    assert closed.accepted == PER_SITE


def flat_run(broker: LocalBroker, run_dir: Path) -> CoordinatorThread:
    """The reference: one coordinator taking all ten agents' updates itself."""
    flat = CoordinatorThread(config("flat"), broker.url, run_dir)
    with agent_fleet(broker.url, "flat", "digits", 2 * PER_SITE):
        flat.start().join()
    return flat


@pytest.mark.parametrize("workers", [2, 4])
def test_ingest_workers_behind_a_shared_subscription_reproduce_the_flat_run(
    broker: LocalBroker, tmp_path: Path, workers: int
) -> None:
    flat = flat_run(broker, tmp_path / "flat")
    job = f"workers{workers}"
    cfg = config(job)
    merged: list[PartialMerged] = []
    coord = CoordinatorThread(cfg, broker.url, tmp_path / job, take_updates=False,
                              on_action=lambda a: merged.append(a)
                              if isinstance(a, PartialMerged) else None)
    pool = [SiteThread(cfg, f"w{i}", broker.url, broker.url, batching=Batching(3, 0.2))
            for i in range(workers)]
    with agent_fleet(broker.url, job, "digits", 2 * PER_SITE):
        coord.start().join()
    for w in pool:
        w.stop()
    assert [m.closed_by for m in coord.closed] == [ClosedBy.QUORUM] * 3
    assert all(m.accepted == 2 * PER_SITE for m in coord.closed)
    # the broker spread the updates: every worker summed some, none was counted twice
    assert {m.aggregator for m in merged} == {f"w{i}" for i in range(workers)}
    assert sum(m.contributors for m in merged) == 3 * 2 * PER_SITE
    for name, flat_weights in flat.node.rounds.weights.items():
        assert coord.node.rounds.weights[name].tobytes() == flat_weights.tobytes()
