"""A small ``fedmq bench hetero``, so the harness cannot rot: every configuration runs over a
real Mosquitto on an uneven fleet and the results carry what the issue asks for.

It asserts what the bench guarantees (the configurations, the JSON keys, the verdict
computed from the runs), never how fast anything ran.
"""

from __future__ import annotations

import pytest

from fedmq_tools.bench.hetero import HeteroOptions, configurations, run_hetero, verdict


def test_the_configurations_are_sync_all_over_selection_carry_late_and_each_k() -> None:
    names = [name for name, _, _ in configurations(HeteroOptions(agents=20, buffer_ks=(3, 7)))]
    assert names == ["sync_all", "sync_q80_over", "sync_q80_over_carry", "fedbuff_k3",
                     "fedbuff_k7"]
    _, over, _ = configurations(HeteroOptions(agents=20))[2]
    assert over == {"quorum": 16, "over_select": 1.3, "carry_late": 2}


def test_the_verdict_compares_the_best_of_each_mode() -> None:
    run = {"accuracy_at_budget": 0.9, "wasted_fraction": 0.01}
    runs = {"sync_all": {**run, "time_to_target_s": 9.0},
            "sync_q80_over": {**run, "time_to_target_s": 6.0},
            "fedbuff_k5": {**run, "time_to_target_s": 2.0, "accuracy_at_budget": 0.895},
            "fedbuff_k10": {**run, "time_to_target_s": None}}
    doc = verdict(runs)
    assert (doc["best_sync"], doc["best_fedbuff"], doc["ratio"]) == ("sync_q80_over",
                                                                   "fedbuff_k5", 3.0)
    assert all(doc["criteria"].values())


@pytest.mark.integration
@pytest.mark.usefixtures("broker")  # declares the Mosquitto need (tests/needs.py)
def test_every_configuration_runs_on_an_uneven_fleet_and_reports_the_figures() -> None:
    opts = HeteroOptions(agents=3, task="digits", target=0.5, base_delay_s=0.02,
                         offline_fraction=0.34, on_s=0.5, off_s=0.3, budget_s=1.5,
                         buffer_ks=(2,), quorum_fraction=0.67)
    doc = run_hetero(opts)
    assert set(doc["runs"]) == {"sync_all", "sync_q67_over", "sync_q67_over_carry",
                                "fedbuff_k2"}
    assert doc["delays_s"] == pytest.approx([0.0, 0.04, 0.18]) and len(doc["flaky_agents"]) == 1
    for run in doc["runs"].values():
        assert run["steps"] >= 1 and run["bytes_up"] > 0 and run["bytes_down"] > 0
        assert 0 <= run["wasted_fraction"] <= 1
    # the flaky agent went offline and came back (fedmq/fleet_driver.py) during the runs
    assert sum(run["availability_changes"] for run in doc["runs"].values()) >= 2
    for key in ("sync_time_to_target_s", "fedbuff_time_to_target_s", "ratio", "criteria"):
        assert key in doc
