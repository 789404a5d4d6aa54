"""FedBuff and --carry-late runs in every view: the status names the mode, metrics carry a
staleness histogram, and the monitor, the progress log, Prometheus and ``fedmq report``
show the version, the buffer's fill, the histogram and the wasted (stale) updates."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from coordinator import MessageRejected, RoundClosed
from coordinator.staleness import BufferConfig
from fedmq.monitor.events import RoundSeen, StatusChanged, describe
from fedmq.monitor.state import MonitorState
from fedmq.monitor.view import render
from fedmq.progress import round_line
from fedmq.prometheus import MetricsExporter
from fedmq.report import load_run, markdown
from protocol import (
    ClosedBy,
    Phase,
    Publish,
    RejectReason,
    RoundMetrics,
    Status,
    Topics,
    WireError,
    decode_metrics,
    decode_status,
    encode_metrics,
    encode_status,
)
from tests.coordinator.test_buffered import announced, send, start

METRICS = RoundMetrics(job="fb", run="r1", round=7, closed_by=ClosedBy.QUORUM, accepted=5,
                       declined=0, rejected={"stale": 2}, samples=50, duration_s=0.2,
                       bytes_up=10, bytes_down=10, raw_bytes_up=10, accuracy=0.8, loss=0.5,
                       at=1.0, staleness={"0": 2, "1": 2, "10": 1})
STATUS = Status(job="fb", run="r1", phase=Phase.TRAINING, round=8, rounds=100, attempt=3,
                accepted=3, quorum=5, min_replies=1, cohort_size=20, agents_online=20,
                deadline_at=None, rejected={"stale": 2}, at=1.5, mode="fedbuff")


def test_the_wire_carries_the_mode_and_the_histogram_and_refuses_bad_ones() -> None:
    assert decode_status(encode_status(STATUS)) == STATUS
    assert decode_metrics(encode_metrics(METRICS)) == METRICS
    assert b"mode" not in encode_status(replace(STATUS, mode="sync"))  # sync is unchanged
    assert b"staleness" not in encode_metrics(replace(METRICS, staleness=None))
    bad = json.loads(encode_status(STATUS))
    with pytest.raises(WireError):
        decode_status(json.dumps({**bad, "mode": "async"}).encode())
    doc = json.loads(encode_metrics(METRICS))
    for staleness in ({"x": 1}, {"1": -1}, {"1": 1.5}):
        with pytest.raises(WireError):
            decode_metrics(json.dumps({**doc, "staleness": staleness}).encode())


def test_the_buffered_machine_publishes_its_mode_and_each_steps_staleness() -> None:
    machine, actions = start(BufferConfig(k=2, max_staleness=3))
    v1 = announced(actions)
    send(machine, "a1", v1, seed=1)
    v2 = announced(send(machine, "a2", v1, seed=2))  # the first step: version 2
    send(machine, "a0", v1, seed=3)  # trained from version 1: one version stale
    closing = send(machine, "a1", v2, seed=4)
    (closed,) = [a.metrics for a in closing if isinstance(a, RoundClosed)]
    assert closed.round == 2 and closed.staleness == {"0": 1, "1": 1}
    assert machine.history[0].staleness == {"0": 2}
    statuses = [decode_status(a.payload) for a in closing
                if isinstance(a, Publish) and a.topic.endswith("/status")]
    assert statuses and all(s.mode == "fedbuff" for s in statuses)


def test_the_monitor_shows_version_buffer_staleness_and_waste() -> None:
    state = MonitorState()
    state.apply(Topics("fb").metrics, encode_metrics(METRICS), False, 2.0)
    state.apply(Topics("fb").status, encode_status(STATUS), False, 2.0)
    console = Console(record=True, width=140, color_system=None)
    console.print(render(state, 2.0, broker="mqtt://test:1883", connected=True, job="fb"))
    text = console.export_text()
    assert "version  8/100" in text and "buffer" in text and "3/5" in text
    assert "retry" not in text  # a re-announcement of a version is no retry
    assert "staleness 0:2 1:2 10:1" in text and "(wasted: 2 stale)" in text
    assert "version 8/100  buffer 3/5" in describe(StatusChanged("fb", STATUS, retained=False))
    assert "staleness 0:2 1:2 10:1" in describe(RoundSeen("fb", METRICS, retained=False))
    assert "staleness 0:2 1:2 10:1" in round_line(METRICS, rounds=100, quorum=5)


def test_prometheus_exports_the_staleness_histogram_and_wasted_updates() -> None:
    exporter = MetricsExporter()
    exporter(RoundClosed(METRICS))
    exporter(MessageRejected("a0", 3, RejectReason.STALE, "too old"))
    exporter(MessageRejected("a0", 3, RejectReason.DUPLICATE, "again"))
    get = exporter.registry.get_sample_value
    assert get("fedmq_update_staleness_count") == 5
    assert get("fedmq_update_staleness_bucket", {"le": "0.0"}) == 2
    assert get("fedmq_update_staleness_bucket", {"le": "1.0"}) == 4
    assert get("fedmq_updates_wasted_total") == 1


def test_the_report_totals_the_staleness_and_the_waste(tmp_path: Path) -> None:
    lines = [encode_metrics(replace(METRICS, round=r)).decode() for r in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    text = markdown(load_run(tmp_path))
    assert "| staleness | 0:4 1:4 10:2 (tau:updates applied); wasted 4 (rejected stale) |" in text
