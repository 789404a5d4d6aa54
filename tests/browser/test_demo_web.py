"""``fedmq demo --web --browser-agents N`` as a user runs it: Python agents in a child
process, N agents in headless Chromium, the pages served, the links printed, and the
summary counting accepted updates by agent kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import require_chromium, require_mosquitto

pytestmark = pytest.mark.integration


def test_the_demo_runs_browser_agents_beside_python_ones(tmp_path: Path) -> None:
    require_mosquitto()
    require_chromium()
    summary = tmp_path / "summary.json"
    run = subprocess.run(
        [sys.executable, "-m", "fedmq", "demo", "--web", "--web-listen", "127.0.0.1:0",
         "--browser-agents", "2", "--agents", "2", "--rounds", "3", "--summary", str(summary)],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["phase"] == "done" and s["rounds_completed"] == 3
    assert s["updates_by_kind"] == {"browser": 6, "python": 6}
    assert s["updates_rejected"] == 0
    out = run.stdout
    assert "by kind        browser 6, python 6" in out
    assert "dashboard: http://127.0.0.1:" in out and "/agent#broker=ws%3A%2F%2F127.0.0.1" in out
    assert "pass=" in out and "exposed on the LAN" in out
    assert "█" in out  # the agent link's QR code
