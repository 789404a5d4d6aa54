"""A small ``fedmq bench hetero``, so the harness cannot rot: both modes reach the target.

It asserts what the bench guarantees (speed classes, both runs done, the JSON keys),
never how fast anything ran.
"""

from __future__ import annotations

import pytest

from fedmq_tools.bench.hetero import HeteroOptions, delays, run_hetero


def test_speed_classes_are_artificial_delays_cycled_over_the_agents() -> None:
    assert delays(HeteroOptions(agents=4, base_delay_s=0.5)) == [0.0, 1.0, 4.5, 0.0]


@pytest.mark.integration
@pytest.mark.usefixtures("broker")  # declares the Mosquitto need (tests/needs.py)
def test_both_modes_reach_the_target_and_the_ratio_is_reported() -> None:
    doc = run_hetero(HeteroOptions(agents=3, base_delay_s=0.05, target=0.5, buffer_k=2,
                                   timeout_s=120.0))
    assert doc["sync"]["phase"] == doc["fedbuff"]["phase"] == "done"
    s, f = doc["sync_time_to_target_s"], doc["fedbuff_time_to_target_s"]
    assert s is not None and f is not None and s > 0 and f > 0
    assert doc["ratio"] == round(s / f, 3)
