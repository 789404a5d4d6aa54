"""A tiny chaos run over a real Mosquitto: digits, 3 agent processes, 4 rounds, and one of
each fault (an agent SIGKILLed and restarted, the broker restarted, the coordinator
SIGKILLed and resumed). Every round is closed exactly once and nothing crashes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fedmq.broker import LocalBroker
from fedmq_tools.chaos import ChaosOptions, report, run_chaos

pytestmark = pytest.mark.integration


def test_a_tiny_chaos_run_accounts_for_every_round_and_nothing_crashes(
    own_broker: LocalBroker, tmp_path: Path
) -> None:
    opts = ChaosOptions(task="digits", agents=3, rounds=4, agent_kills=1, broker_restarts=1,
                        coordinator_kills=1, seed=1, deadline_s=5.0, workdir=tmp_path,
                        timeout_s=240.0, clean=False)

    doc = run_chaos(opts, own_broker)

    chaos, verdict = doc["chaos"], doc["verdict"]
    assert verdict["every_round_accounted_for"] and verdict["no_crash"], report(doc)
    assert [r["round"] for r in chaos["rounds"]] == [1, 2, 3, 4]
    assert Counter(f["kind"] for f in chaos["faults"] if f["kind"] != "agent back") == {
        "agent": 1, "broker": 1, "coordinator": 1}
    assert chaos["process_starts"]["coordinator"] == 2  # killed once, resumed once
    assert all(r["accepted"] + r["missing"] + r["declined"] == 3 for r in chaos["rounds"])
    assert chaos["final_accuracy"] > 0.85
