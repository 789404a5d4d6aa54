"""DP runs' epsilon shows in the monitor's lines, its live view and the progress log."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from coordinator import RoundClosed
from fedmq.monitor.events import RoundSeen, describe
from fedmq.monitor.state import MonitorState
from fedmq.monitor.view import render
from fedmq.progress import round_line
from fedmq.prometheus import MetricsExporter
from protocol import ClosedBy, RoundMetrics, Topics, encode_metrics

METRICS = RoundMetrics(job="dp", run="r1", round=3, closed_by=ClosedBy.QUORUM, accepted=2,
                       declined=0, rejected={}, samples=20, duration_s=1.0, bytes_up=10,
                       bytes_down=10, raw_bytes_up=10, accuracy=0.5, loss=1.0, at=1.0,
                       epsilon=2.4567)


def test_epsilon_is_shown_when_the_round_has_one() -> None:
    assert "acc 0.5000, epsilon 2.46," in describe(RoundSeen("dp", METRICS, retained=False))
    assert "epsilon 2.46" in round_line(METRICS, rounds=5, quorum=2)
    state = MonitorState()
    state.apply(Topics("dp").metrics, encode_metrics(METRICS), False, 2.0)
    console = Console(record=True, width=120, color_system=None)
    console.print(render(state, 2.0, broker="mqtt://test:1883", connected=True, job="dp"))
    assert "accuracy 0.5000   loss 1.0000   epsilon 2.46   (round 3)" in console.export_text()


def test_prometheus_exports_epsilon() -> None:
    exporter = MetricsExporter()
    exporter(RoundClosed(METRICS))
    assert exporter.registry.get_sample_value("fedmq_dp_epsilon") == 2.4567


def test_no_epsilon_without_dp() -> None:
    plain = replace(METRICS, epsilon=None)
    assert "epsilon" not in describe(RoundSeen("dp", plain, retained=False))
    assert "epsilon" not in round_line(plain, rounds=5, quorum=2)
