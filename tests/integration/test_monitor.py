"""Watching a live run over a real Mosquitto: ``fedmq monitor --json``, the Prometheus
endpoint, and ``fedmq report`` on the run directory the coordinator left."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import TIMEOUT_S, CoordinatorThread, agent_fleet, wait_process, wait_until
from prometheus_client.parser import text_string_to_metric_families
from test_training import digits_config, publish_raw

from coordinator import Action, RoundClosed
from fedmq.broker import LocalBroker
from fedmq.progress import RunRecorder
from fedmq.prometheus import MetricsExporter
from fedmq.report import PLOTS, write_report
from fedmq_tools.brokers import PrivateBroker
from protocol import Topics

pytestmark = pytest.mark.integration

WATCHING_MD = Path(__file__).resolve().parents[2] / "docs" / "WATCHING.md"


class MonitorProcess:
    """``fedmq monitor --json`` as a child process; its lines parsed as they arrive."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedmq", "monitor", "--json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events if e["event"] == kind]

    def wait_for(self, kind: str, timeout: float = TIMEOUT_S) -> None:
        wait_until(lambda: bool(self.of(kind)), self.cond, timeout)

    def finish(self) -> int:
        code = wait_process(self.proc)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """Stop it if a failed test left it running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.brokers
def test_monitor_json_sees_every_round_close_with_the_right_counts(
    any_broker: PrivateBroker, tmp_path: Path
) -> None:
    job = "monitored"
    topics = Topics(job)
    monitor = MonitorProcess("--broker", any_broker.url, "--job", job, "--exit-when-done")
    try:
        monitor.wait_for("subscribed")
        recorder = RunRecorder(3, out=None, jsonl=tmp_path / "metrics.jsonl")
        coord = CoordinatorThread(digits_config(job, rounds=3, min_agents=3), any_broker.url,
                                  tmp_path, on_action=recorder)
        coord.start()
        monitor.wait_for("status")  # the coordinator is connected and subscribed
        publish_raw(any_broker.url, topics.update("agent-0"), b"\x00 not msgpack")
        publish_raw(any_broker.url, topics.status, b"{ not a status")
        with agent_fleet(any_broker.url, job, "digits", 3):
            coord.join()
        assert monitor.finish() == 0
    finally:
        monitor.kill()

    truth = coord.closed
    seen = monitor.of("round")
    assert [r["round"] for r in seen] == [1, 2, 3]
    keys = ("run", "closed_by", "accepted", "declined", "rejected", "samples", "bytes_up",
            "bytes_down", "accuracy", "loss")
    for event, metrics in zip(seen, truth, strict=True):
        assert event["job"] == job and event["retained"] is False
        assert {k: event[k] for k in keys} == {
            "run": metrics.run, "closed_by": metrics.closed_by.value, "accepted": 3,
            "declined": 0, "rejected": dict(metrics.rejected), "samples": metrics.samples,
            "bytes_up": metrics.bytes_up, "bytes_down": metrics.bytes_down,
            "accuracy": metrics.accuracy, "loss": metrics.loss,
        }
    statuses = monitor.of("status")
    # the status is paced (at most every 0.5 s between phase changes): the round's last
    # count shows as it closes, in the evaluating status
    assert max(s["accepted"] for s in statuses if s["phase"] in ("training", "evaluating")) == 3
    assert {s["quorum"] for s in statuses if s["phase"] == "training"} == {3}
    assert statuses[-1]["phase"] == "done" and statuses[-1]["rejected"] == {"malformed": 1}
    (finished,) = monitor.of("finished")
    assert (finished["phase"], finished["run"]) == ("done", truth[0].run)
    online = {e["agent"] for e in monitor.of("presence") if e["online"]}
    assert online == {"agent-0", "agent-1", "agent-2"}
    (bad,) = monitor.of("malformed")
    assert (bad["kind"], bad["reason"]) == ("status", "malformed")

    # The run directory the coordinator left is enough for a report.
    written = write_report(tmp_path, tmp_path / "report")
    for name in PLOTS:
        assert 5_000 < (tmp_path / "report" / name).stat().st_size < 200_000
    assert "| updates | 9 accepted, 0 declined" in written[-1].read_text()


def scrape(port: int) -> tuple[dict[str, float], set[str]]:
    """Every sample on ``/metrics`` as ``name{label="v",...}`` -> value, and the family names."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples, families


def documented_metric_names() -> set[str]:
    return set(re.findall(r"^\| `(fedmq_[a-z_]+)`", WATCHING_MD.read_text(), re.MULTILINE))


def test_prometheus_endpoint_serves_the_documented_metrics(
    broker: LocalBroker, tmp_path: Path
) -> None:
    job = "scraped"
    exporter = MetricsExporter()
    port = exporter.serve("127.0.0.1", 0)
    during: list[dict[str, float]] = []

    def observe(action: Action) -> None:
        exporter(action)
        if isinstance(action, RoundClosed) and action.metrics.round == 1:
            during.append(scrape(port)[0])  # the coordinator's thread waits; the server's does not

    coord = CoordinatorThread(digits_config(job, rounds=3, min_agents=3), broker.url, tmp_path,
                              on_action=observe)
    try:
        with agent_fleet(broker.url, job, "digits", 3):
            coord.start().join()
        after, families = scrape(port)
    finally:
        exporter.close()

    (first,) = during
    assert first['fedmq_rounds_total{closed_by="quorum"}'] == 1
    assert first["fedmq_updates_accepted_total"] == 3
    truth = coord.closed
    assert after['fedmq_rounds_total{closed_by="quorum"}'] == 3
    assert after["fedmq_updates_accepted_total"] == 9
    assert after['fedmq_payload_bytes_total{direction="up"}'] == sum(m.bytes_up for m in truth)
    assert after['fedmq_payload_bytes_total{direction="down"}'] == sum(m.bytes_down for m in truth)
    assert after["fedmq_round_duration_seconds_count"] == 3
    assert after["fedmq_round_duration_seconds_sum"] == pytest.approx(
        sum(m.duration_s for m in truth))
    assert after["fedmq_accuracy"] == truth[-1].accuracy
    assert after["fedmq_loss"] == truth[-1].loss
    assert after["fedmq_agents_online"] == 3
    assert after["fedmq_round"] == 3 and after["fedmq_round_quorum"] == 3
    assert after['fedmq_phase{fedmq_phase="done"}'] == 1
    assert after[f'fedmq_run_info{{fedmq_job="{job}",mode="sync",run="{truth[0].run}"}}'] == 1
    # The documented names are exactly the served ones (a counter's family name drops its
    # _total; prometheus_client adds a _created timestamp to counters and histograms).
    documented = {re.sub(r"_total$", "", n) for n in documented_metric_names()}
    assert documented == {f for f in families if not f.endswith("_created")}
