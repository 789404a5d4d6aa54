"""A small ``fedmq bench downlink``, so the harness cannot rot: what it counts down is what
its loopback broker delivered, and a delta row sends less than the whole-model row."""

from __future__ import annotations

from fedmq_tools.bench.downlink import DownlinkOptions, report, run_downlink


def test_downlink_bench_counts_what_it_delivers() -> None:
    opts = DownlinkOptions(task="digits", agents=3, partition="iid", rounds=3,
                           deltas=("qsgd:2+zstd:9",))
    doc = run_downlink(opts)
    whole, delta = doc["rows"]
    assert whole["phase"] == delta["phase"] == "done"
    for row in doc["rows"]:
        assert [r["round"] for r in row["rounds"]] == [1, 2, 3]
        assert [r["addressed"] for r in row["rounds"]] == [3, 3, 3]
        assert all(r["bytes_down"] == r["delivered_down"] for r in row["rounds"])
    later = delta["rounds"][2]
    assert later["ratio_down"] > 4 * whole["rounds"][2]["ratio_down"]
    assert abs(delta["final_accuracy"] - whole["final_accuracy"]) < 0.1
    assert "qsgd:2+zstd:9" in report(doc)
