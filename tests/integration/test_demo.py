"""``fedmq demo`` as a user runs it: its own private Mosquitto, ten agents, a summary.

Backs the README's demo section: the run completes every round with every reply,
learns (digits, seeded), and sends compressed updates and delta-coded models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedmq.broker import LocalBroker

DEMO_TIMEOUT_S = 180.0


@pytest.mark.integration
def test_the_demo_trains_ten_agents_with_compressed_updates_and_models(
    broker: LocalBroker, tmp_path: Path  # the session broker only proves Mosquitto is here
) -> None:
    summary_file, run_dir = tmp_path / "summary.json", tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "fedmq", "demo", "--summary", str(summary_file),
         "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "private mosquitto" in out and "watch it: fedmq monitor --broker mqtt://" in out
    assert sum(line.startswith("round ") for line in out.splitlines()) == 10
    summary = json.loads(summary_file.read_text())
    assert summary["phase"] == "done" and summary["rounds_completed"] == 10
    assert summary["updates_accepted"] == 100 and summary["updates_rejected"] == 0
    assert summary["final_accuracy"] >= 0.90
    assert summary["compression_ratio_up"] >= 4.0  # int8+zstd, the demo's default codec
    # delta-coded models (qsgd:2+zstd:9): each agent fetched the whole model in round 1 only
    assert summary["compression_ratio_down"] >= 4.0 and summary["compression_ratio_both"] >= 4.0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 10
    assert (run_dir / "checkpoint.msgpack").stat().st_size > 0
