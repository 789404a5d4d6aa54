"""``fedmq bench scale --sites K``: simulated agents across K bridged site brokers.

Per fleet size N: a central private Mosquitto with the coordinator on it (in this
process), K site Mosquittos each bridged to it (:func:`fedmq.broker.site_bridge`),
one ``fedmq aggregator`` process per site, and N agents in ``fedmq swarm``
processes spread over the sites (N / K each, every agent its own connection to its
site broker). A size passes when every round closes with all N updates accepted
before the deadline, as in :mod:`fedmq_tools.bench.scale`.

Measured per size, besides :mod:`~fedmq_tools.bench.scale`'s figures: the bytes that
reached the coordinator per round (the sites' partials) against the raw float32
bytes of N updates, i.e. how much the central uplink shrank, and CPU and peak RSS of
the central broker, the site brokers, the site aggregators, the swarms and the
coordinator process, over the rounds only.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from coordinator import RoundConfig
from fedmq.broker import LocalBroker, site_bridge
from fedmq.launch import Connection, build_coordinator
from fedmq.tasks import DataConfig, get_task
from fedmq_tools.bench.fleet import FleetSpec, spawn, split
from fedmq_tools.bench.measure import cpu_s, reset_peak_rss, stop_all, usage
from fedmq_tools.bench.scale import ScaleOptions, _Window
from protocol import ClosedBy, Phase
from transport.connection import BrokerURL


class _SiteWindow(_Window):
    """The scale window, with the site brokers and aggregators counted apart."""

    def __init__(self, broker_pid: int | None, sites: dict[str, list[int]]) -> None:
        super().__init__(broker_pid)
        self.sites = sites

    def _sample(self) -> dict[str, float]:
        out = super()._sample()
        for role, pids in self.sites.items():
            out[role] = cpu_s(list(pids))
        return out


def _aggregator(site: str, local: str, upstream: str, *, job: str, opts: ScaleOptions,
                log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "fedmq", "aggregator", "--site", site, "--local", local,
               "--upstream", upstream, "--job", job, "--task", opts.task,
               "--deadline", str(opts.deadline_s)]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def run_sites_size(n: int, sites: int, opts: ScaleOptions, logs: Path) -> dict[str, Any]:
    """One fleet of ``n`` agents over ``sites`` bridged site brokers; its figures."""
    task = get_task(opts.task)
    job = f"sites-{n}-{sites}"
    with ExitStack() as stack:
        central = stack.enter_context(LocalBroker(extra_config=opts.broker_config))
        address = f"127.0.0.1:{central.port}"
        brokers = [stack.enter_context(LocalBroker(
            extra_config=f"{opts.broker_config}\n{site_bridge(f'site-{i}', address, job)}"))
            for i in range(sites)]
        aggregators = [_aggregator(f"site-{i}", b.url, central.url, job=job, opts=opts,
                                   log=logs / f"aggregator-{i}.log")
                       for i, b in enumerate(brokers)]
        window = _SiteWindow(central.pid, {
            "site_brokers": [b.pid for b in brokers if b.pid],
            "site_aggregators": [p.pid for p in aggregators]})
        config = RoundConfig(job=job, task=opts.task, rounds=opts.rounds, plan=task.plan,
                             min_replies=n, deadline_s=opts.deadline_s, min_agents=n,
                             on_short_round="stop")
        node = build_coordinator(config, Connection(BrokerURL.parse(central.url)),
                                 data=DataConfig(data_dir=opts.data_dir), run_dir=None,
                                 on_action=window)
        reset_peak_rss()
        spawned = time.monotonic()
        procs: list[subprocess.Popen[bytes]] = []
        per_site = max(1, opts.processes // sites)
        for i, ((first, count), b) in enumerate(zip(split(n, sites), brokers, strict=True)):
            # each site's agents from a loopback address of their own: one address has
            # about 28,000 ephemeral ports, fewer than a large fleet's connections
            spec = FleetSpec(broker=b.url, job=job, task=opts.task, count=count, first=first,
                             total=n, data_dir=opts.data_dir, exit_when_done=False,
                             source_address=f"127.0.0.{2 + i}")
            site_logs = logs / f"site-{i}"
            site_logs.mkdir()
            procs += spawn(spec, per_site, site_logs)
        window.swarm_pids = [p.pid for p in procs]
        timer = threading.Timer(opts.timeout_s, node.stop, args=("bench timeout",))
        timer.start()
        try:
            phase = node.run()
        finally:
            timer.cancel()
            peaks = {"coordinator": usage().peak_rss,
                     "central_broker": usage(central.pid).peak_rss if central.pid else None,
                     "site_broker_max": max((usage(b.pid).peak_rss for b in brokers if b.pid),
                                            default=None),
                     "site_aggregator_max": max((usage(p.pid).peak_rss for p in aggregators),
                                                default=None)}
            stopped = stop_all(procs + aggregators, timeout=60.0)
    rounds = window.rounds
    on_time = [m.closed_by in (ClosedBy.QUORUM, ClosedBy.ALL_REPLIED) for m in rounds]
    passed = phase is Phase.DONE and len(rounds) == opts.rounds and all(on_time)
    cpu = {name: round(window.end[name] - window.start[name], 2)
           for name in window.start if name in window.end and name != "machine"}
    span = (window.closed_at or 0.0) - (window.opened_at or 0.0)
    machine = (window.end.get("machine", 0.0) - window.start.get("machine", 0.0))
    last = rounds[-1] if rounds else None
    return {
        "agents": n, "sites": sites, "swarm_processes": len(procs), "passed": passed,
        "failure": None if passed else (node.rounds.message or f"ended {phase.value}"),
        "startup_s": round(window.opened_at - spawned, 2) if window.opened_at else None,
        "round_s": [round(m.duration_s, 3) for m in rounds],
        "closed_by": [m.closed_by.value for m in rounds],
        "accepted": [m.accepted for m in rounds],
        "central_bytes_up_per_round": last.bytes_up if last else None,
        "raw_update_bytes_per_round": last.raw_bytes_up if last else None,
        "central_uplink_reduction": (round(last.raw_bytes_up / last.bytes_up, 1)
                                     if last and last.bytes_up else None),
        "rounds_wall_s": round(span, 3) if rounds else None,
        "cpu_s_during_rounds": cpu,
        "foreign_cpu_s": round(max(machine - sum(cpu.values()), 0.0), 2) if cpu else None,
        "peak_rss": peaks,
        "exit_codes": sorted({code for _, code in stopped}),
    }


def sites_line(s: dict[str, Any]) -> str:
    verdict = "PASS" if s["passed"] else f"FAIL ({s['failure']})"
    rounds = " ".join(f"{x:.2f}" for x in s["round_s"]) or "-"
    cpu = "  ".join(f"{k} {v:.1f} s" for k, v in s["cpu_s_during_rounds"].items())
    return (f"{s['agents']:>6} agents / {s['sites']} sites  {verdict}  online in "
            f"{s['startup_s']} s  rounds [{rounds}] s  central uplink "
            f"{s['central_bytes_up_per_round']} B/round (x{s['central_uplink_reduction']} less "
            f"than raw)  cpu {cpu}  foreign {s['foreign_cpu_s']} s")
