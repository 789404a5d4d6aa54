"""Small versions of every benchmark, so the harness cannot rot.

They assert what each bench guarantees (all rounds closed, all updates
accepted, agreement with the reference, figures present and plausible),
never how fast anything ran: speed is for the benchmarks themselves.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fedmq.broker import LocalBroker
from fedmq_tools.bench import fleet, footprint, ingest, scale, w1, workers
from fedmq_tools.bench.measure import stop_all, usage
from fedmq_tools.swarm import MemberState, Swarm
from transport.connection import BrokerURL

needs_mnist = pytest.mark.usefixtures("real_mnist")


@pytest.mark.integration
@needs_mnist
def test_w1_shaped_run_matches_its_reference(broker: LocalBroker) -> None:
    opts = w1.W1Options(task="mnist-logreg", agents=3, rounds=2, broker=broker.url,
                        ref_threads=1, timeout_s=120.0)
    doc = w1.run_w1(opts)
    run = doc["fedmq"]
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    assert all(r["accepted"] == 3 and r["closed_by"] == "quorum" for r in run["rounds"])
    assert len(doc["reference"]["accuracy"]) == len(doc["centralised"]["accuracy"]) == 2
    assert doc["comparison"]["max_abs_accuracy_diff"] <= w1.ACCURACY_TOLERANCE
    raw = run["rounds"][0]["raw_bytes_up"]
    assert raw == 3 * 4 * (784 * 10 + 10)  # three float32 logreg deltas
    assert raw < run["rounds"][0]["bytes_up"] < 1.01 * raw  # msgpack envelopes are small
    assert run["wall_s"] > 0 and run["agent_exit_codes"] == [0]
    # real process sizes: more than an interpreter with numpy, less than a runaway
    for who in ("agent_0", "coordinator"):
        assert 20 << 20 < run["peak_rss"][who] < 4 << 30
    # peak RSS so far, per round: never falls, and ends at most at the run's peak
    for who in ("coordinator", "agent_0"):
        per_round = [r[f"peak_rss_{who}"] for r in run["rounds"]]
        assert 0 < per_round[0] <= per_round[1] <= run["peak_rss"][who]
    assert len(doc["repeats"]["fedmq"]) == len(doc["repeats"]["reference"]) == 1
    assert doc["fedmq"]["foreign_cpu_s"] >= 0
    assert "wall fedmq" in w1.report(doc)


@needs_mnist
def test_ingest_pure_accepts_every_update() -> None:
    weights, deltas = ingest.real_deltas("mnist-logreg", None)
    for codec in ("none", "topk+int8+zstd"):
        row = ingest.ingest_pure("mnist-logreg", codec, weights, deltas, updates=6)
        assert row["updates"] == 6 and row["updates_per_s"] > 0
        # the plain inexact path ran beside it on the same payloads
        assert row["plain_updates_per_s"] > 0
        assert row["ratio_to_plain"] == pytest.approx(
            row["updates_per_s"] / row["plain_updates_per_s"], rel=0.01)
        assert set(row["add_us"]) >= {"plain_multiply_add", "numpy"}
    assert row["mean_update_bytes"] < 4 * (784 * 10 + 10)  # sparsified and compressed


@pytest.mark.integration
@needs_mnist
def test_ingest_through_the_broker(broker: LocalBroker) -> None:
    opts = ingest.IngestOptions(broker=broker, timeout_s=120.0)
    row = ingest.ingest_broker("mnist-logreg", "fp16", 5, opts)
    assert row["updates"] == 5 and row["dropped"] == 0
    assert row["updates_per_s"] > 0 and row["publisher_updates_per_s"] > 0


@pytest.mark.integration
@needs_mnist
def test_ingest_through_two_workers_counts_every_update_once() -> None:
    doc = workers.run_workers("mnist-logreg", "fp16", 20, counts=(2,), batch=4,
                              opts=ingest.IngestOptions(timeout_s=120.0))
    alone, two = doc["rows"]
    assert (alone["workers"], two["workers"]) == (0, 2)
    assert alone["updates"] == two["updates"] == 20 and alone["ratio_to_coordinator"] == 1.0
    assert two["cpu_s"]["workers"] > 0 and two["updates_per_s"] > 0


@pytest.mark.integration
@needs_mnist
def test_swarm_of_twenty_in_two_processes_keeps_its_deadlines(
    broker: LocalBroker, tmp_path: Path
) -> None:
    opts = scale.ScaleOptions(counts=(20,), processes=2, rounds=2, deadline_s=60.0,
                              timeout_s=120.0)
    result = scale.run_size(20, opts, tmp_path, broker=broker)
    assert result["passed"], result["failure"]
    assert result["accepted"] == [20, 20] and result["processes"] == 2
    assert result["swarm_exit_codes"] == [0]
    assert 20 << 20 < result["peak_rss"]["swarm_process_max"] < 4 << 30
    assert "PASS" in scale.size_line(result)


@pytest.mark.integration
@needs_mnist
def test_scale_runs_each_size_on_each_broker_side_by_side(broker: LocalBroker) -> None:
    # a running broker given by URL (nothing started, no PID to measure), then a private one
    opts = scale.ScaleOptions(counts=(6,), processes=1, rounds=1, deadline_s=60.0,
                              timeout_s=120.0, brokers=(broker.url, "mosquitto"))
    doc = scale.run_scale(opts)
    assert [(s["broker"], s["passed"]) for s in doc["sizes"]] == [(broker.url, True),
                                                                  ("mosquitto", True)]
    assert doc["sizes"][0]["peak_rss"]["broker"] is None
    assert doc["sizes"][1]["peak_rss"]["broker"] > 1 << 20
    assert doc["round_s_ratio"]["6"][broker.url] == 1.0
    assert doc["round_s_ratio"]["6"]["mosquitto"] > 0 and doc["largest_passing_fleet"] == 6


def test_round_ratios_are_against_the_first_broker_and_only_where_every_broker_passed() -> None:
    def size(n: int, broker: str, round_s: list[float], passed: bool = True) -> dict[str, object]:
        return {"agents": n, "broker": broker, "round_s": round_s, "passed": passed}

    sizes = [size(10, "mosquitto", [1.0, 3.0]), size(10, "nats", [3.0, 5.0]),
             size(20, "mosquitto", [2.0]), size(20, "nats", [9.0], passed=False)]
    assert scale.round_ratios(sizes, ("mosquitto", "nats")) == {
        "10": {"mosquitto": 1.0, "nats": 2.0}}


@pytest.mark.integration
def test_swarm_members_reconnect_after_a_broker_restart(own_broker: LocalBroker) -> None:
    spec = fleet.FleetSpec(broker=own_broker.url, job="swarm-restart", task="linreg", count=4,
                           exit_when_done=False)
    swarm = Swarm(fleet.build_members(spec), BrokerURL.parse(own_broker.url),
                  exit_when_done=False)
    thread = threading.Thread(target=swarm.run, daemon=True)
    thread.start()
    online = threading.Event()
    agents = [f"agent-{k}" for k in range(4)]
    watchers = [footprint.OnlineWatch(own_broker.url, "swarm-restart", a) for a in agents]
    try:
        assert all(w.event.wait(30) for w in watchers)
        for w in watchers:
            w.close()
        own_broker.restart()  # no persistence: retained presence is gone with it
        # each member comes back after its own jittered delay, and republishes its presence
        watchers = [footprint.OnlineWatch(own_broker.url, "swarm-restart", a) for a in agents]
        assert all(w.event.wait(30) for w in watchers)
        online.set()
    finally:
        for w in watchers:
            w.close()
        swarm.stop()
        thread.join(30)
    assert online.is_set() and not thread.is_alive()
    assert swarm.stats.reconnects >= 4
    assert all(m.state is MemberState.GONE for m in swarm.members)


@pytest.mark.integration
def test_swarm_members_connect_from_the_source_address_they_are_given(
    broker: LocalBroker,
) -> None:
    # one local address has about 28,000 ephemeral ports: large fleets use several
    spec = fleet.FleetSpec(broker=broker.url, job="swarm-source", task="linreg", count=3,
                           exit_when_done=False, source_address="127.0.0.7")
    assert fleet.swarm_command(spec)[-2:] == ["--source-address", "127.0.0.7"]
    swarm = Swarm(fleet.build_members(spec), BrokerURL.parse(broker.url),
                  exit_when_done=False, source_address=spec.source_address)
    thread = threading.Thread(target=swarm.run, daemon=True)
    thread.start()
    watchers = [footprint.OnlineWatch(broker.url, "swarm-source", f"agent-{k}") for k in range(3)]
    try:
        assert all(w.event.wait(30) for w in watchers)
        sources = {m.client.socket().getsockname()[0] for m in swarm.members}
    finally:
        for w in watchers:
            w.close()
        swarm.stop()
        thread.join(30)
    assert sources == {"127.0.0.7"} and not thread.is_alive()


def test_fleets_larger_than_the_dataset_reuse_shards() -> None:
    assert fleet.shard_count(1000, 10_000, "iid") == 1000
    assert fleet.shard_count(16_000, 10_000, "iid") == 10_000
    assert fleet.shard_count(16_000, 10_000, "shards") == 5_000
    spec = fleet.FleetSpec(broker="mqtt://127.0.0.1:1", job="big", task="linreg", count=3,
                           first=2000, total=2003)
    members = fleet.build_members(spec)  # linreg has 2,000 training rows
    assert [core.agent for core, _ in members] == ["agent-2000", "agent-2001", "agent-2002"]
    assert [trainer.samples for _, trainer in members] == [1, 1, 1]


def test_fleet_split_covers_every_agent_once() -> None:
    assert fleet.split(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert fleet.split(2, 4) == [(0, 1), (1, 1)]
    with pytest.raises(ValueError, match="processes"):
        fleet.split(5, 0)


@pytest.mark.integration
def test_footprint_of_a_torch_free_agent(broker: LocalBroker) -> None:
    case = footprint.AgentCase("numpy agent, linreg", "linreg", runner="numpy")
    agent = footprint.measure_agent(case, broker.url, None)
    assert agent["torch_loaded"] == {"idle": False, "after_training": False}
    assert 0 < agent["idle"]["rss"] <= agent["peak_rss_since_start"]
    assert agent["idle"]["rss"] <= agent["peak_rss_while_training"] < 4 << 30
    imports = footprint.import_seconds("edge_agent.numpy_trainer", runs=1)
    assert imports["median_s"] > 0
    size = footprint.installed_size()
    assert {"numpy", "msgpack", "paho-mqtt"} <= set(size["distributions"])
    assert "torch" not in size["distributions"]
    assert size["total"] > size["fedmq_source"] > 0


def test_children_are_measured_alive_then_stopped() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    [(measured, code)] = stop_all([proc])
    assert measured is not None and measured.peak_rss > 0
    # the kernel's ru_maxrss would have reported this (large) test process's peak instead
    assert measured.peak_rss < usage().peak_rss
    assert code == -15
