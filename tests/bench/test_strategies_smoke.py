"""``fedmq bench strategies`` at 2 agents and 2 rounds: every row runs through the real rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.privacy import PrivacyLedger
from fedmq.cli import main
from fedmq_tools.bench.strategies import StrategiesOptions, report, run_strategies

needs_mnist = pytest.mark.usefixtures("real_mnist")


@needs_mnist
def test_two_agents_two_rounds_give_every_row() -> None:
    opts = StrategiesOptions(agents=2, rounds=2, server_opts=("fedadam",), mus=(0.01,),
                             sample_fractions=(0.5,), dp_noises=(1.0,))
    doc = run_strategies(opts)
    rows = {r["label"]: r for r in doc["rows"]}
    assert list(rows) == ["fedavg", "server-opt fedadam", "fedprox mu=0.01", "sample 0.5",
                          "dp z=1 C=1"]
    for row in rows.values():
        assert row["phase"] == "done" and len(row["accuracy"]) == 2
        assert all(0 <= a <= 1 for a in row["accuracy"])
    assert rows["fedavg"]["participants"] == [2, 2]
    assert rows["sample 0.5"]["participants"] == [1, 1]  # ceil(0.5 * 2) of 2
    assert rows["fedavg"]["epsilon"] == [None, None]
    # the DP row's epsilon is the accountant's: every agent every round, q = 1, z = 1
    ledger = PrivacyLedger(1e-5)
    assert rows["dp z=1 C=1"]["epsilon"] == [ledger.record(1.0, 1.0), ledger.record(1.0, 1.0)]
    assert rows["server-opt fedadam"]["accuracy"] != rows["fedavg"]["accuracy"]
    assert "| dp z=1 C=1 |" in report(doc)


def test_a_bad_row_is_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="unknown server optimiser"):
        run_strategies(StrategiesOptions(agents=2, rounds=1, server_opts=("sgd",)))


@needs_mnist
def test_the_cli_writes_a_results_file(tmp_path: Path) -> None:
    out = tmp_path / "strategies.json"
    code = main(["bench", "strategies", "--agents", "2", "--rounds", "1", "--server-opt", "none",
                 "--mu", "none", "--sample-fraction", "none", "--dp-noise", "0.5",
                 "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["bench"] == "strategies" and doc["options"]["agents"] == 2
    assert [r["label"] for r in doc["rows"]] == ["fedavg", "dp z=0.5 C=1"]
    assert doc["rows"][1]["final_epsilon"] > 0
