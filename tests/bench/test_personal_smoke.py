"""``fedmq bench personal`` at 2 agents and 2 rounds: every row present and plausible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmq.cli import main
from fedmq_tools.bench.personal import (
    ROW_LABELS,
    PersonalOptions,
    own_accuracy,
    report,
    run_personal,
)

needs_mnist = pytest.mark.usefixtures("real_mnist")


def test_own_accuracy_weights_labels_by_the_agents_mix() -> None:
    y_test = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 1, 0, 0, 0])  # label 0: 1.0, label 1: 0.5, label 2: 0.0
    mix = np.array([0.75, 0.25, 0.0])
    assert own_accuracy(predicted, y_test, mix) == pytest.approx(0.75 + 0.125)


@needs_mnist
def test_two_agents_two_rounds_give_every_row() -> None:
    doc = run_personal(PersonalOptions(agents=2, rounds=2))
    rows = doc["rows"]
    assert set(rows) == set(ROW_LABELS)
    for row in rows.values():
        assert len(row["own_accuracy"]) == 2
        assert 0 <= row["own_accuracy_min"] <= row["own_accuracy_mean"] <= 1
        assert 0 <= row["test_accuracy_mean"] <= 1 and row["wall_s"] > 0
    # fitting each agent's own data helps on its own data, even after two rounds
    assert rows["fedavg_finetune"]["own_accuracy_mean"] > rows["fedavg"]["own_accuracy_mean"]
    assert "FedPer" in report(doc)


@needs_mnist
def test_the_cli_writes_a_results_file(tmp_path: Path) -> None:
    out = tmp_path / "personal.json"
    code = main(["bench", "personal", "--agents", "2", "--rounds", "1", "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["bench"] == "personal" and doc["options"]["agents"] == 2
    assert doc["command"].startswith("fedmq") and set(doc["rows"]) == set(ROW_LABELS)
