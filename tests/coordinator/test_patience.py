"""Stopping when test accuracy stalls for ``patience`` rounds; pure round machine, fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from coordinator import RoundConfig, Stop
from protocol import Phase, Weights
from tests.helpers import Fleet


def config(**overrides: Any) -> RoundConfig:
    settings: dict[str, Any] = {"job": "job1", "task": "linreg", "rounds": 20, "deadline_s": 10.0,
                                "min_agents": 2}
    settings.update(overrides)
    return RoundConfig(**settings)


def run(accuracies: Sequence[float], **overrides: Any) -> Fleet:
    """A run whose round r evaluates to ``accuracies[r - 1]``."""

    def evaluate(round_no: int, _w: Weights) -> dict[str, float]:
        return {"accuracy": accuracies[round_no - 1], "loss": 1.0}

    fleet = Fleet(2, config(**overrides), evaluate=evaluate)
    fleet.start()
    fleet.run_to_end()
    return fleet


def test_stops_after_patience_rounds_without_improvement() -> None:
    fleet = run([0.5, 0.6, 0.6, 0.55, 0.6, 0.9, 0.9], patience=3)
    assert fleet.rounds.phase is Phase.DONE and fleet.rounds.completed_rounds == 5
    (stop,) = fleet.of_type(Stop)
    assert stop.phase is Phase.DONE
    assert stop.message == (
        "no improvement in accuracy above 0 for 3 rounds (best 0.6000 in round 2); "
        "stopped after round 5"
    )
    assert fleet.retained_model().done  # the final model is published as for any end


def test_an_improvement_resets_the_count() -> None:
    fleet = run([0.5, 0.5, 0.6, 0.6, 0.7, 0.7, 0.7, 0.9], patience=2)
    assert fleet.rounds.completed_rounds == 7
    assert fleet.rounds.message == (
        "no improvement in accuracy above 0 for 2 rounds (best 0.7000 in round 5); "
        "stopped after round 7"
    )


def test_min_delta_ignores_small_gains() -> None:
    fleet = run([0.5, 0.505, 0.509, 0.8], patience=2, min_delta=0.01)
    assert fleet.rounds.completed_rounds == 3
    assert "best 0.5000 in round 1" in fleet.rounds.message


def test_rounds_without_an_accuracy_neither_count_nor_reset() -> None:
    def evaluate(round_no: int, _w: Weights) -> dict[str, float]:
        return {} if round_no % 2 == 0 else {"accuracy": 0.5}  # evaluated in odd rounds

    fleet = Fleet(2, config(rounds=9, patience=3), evaluate=evaluate)
    fleet.start()
    fleet.run_to_end()
    # rounds 3, 5 and 7 are the three evaluated rounds after the best (round 1)
    assert fleet.rounds.completed_rounds == 7
    # a run that is never evaluated (personal layers: no global model) never stalls
    fleet = Fleet(2, config(rounds=6, patience=1), evaluate=lambda _r, _w: {})
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.message == "completed 6 rounds"


def test_without_patience_the_run_goes_on() -> None:
    fleet = run([0.5] * 6, rounds=6)
    assert fleet.rounds.completed_rounds == 6
    assert fleet.rounds.message == "completed 6 rounds"


def test_target_accuracy_still_wins_when_both_apply() -> None:
    # a round that reaches the target ends the run for that reason, whatever patience says
    fleet = run([0.5, 0.5, 0.5, 0.95], patience=2, target_accuracy=0.5)
    assert fleet.rounds.completed_rounds == 1
    assert fleet.rounds.message.startswith("reached target accuracy 0.5000")


def test_patience_counts_rounds_from_a_resumed_history() -> None:
    accuracies = [0.7, 0.6, 0.6, 0.6, 0.6]
    first = run(accuracies, rounds=2)

    def evaluate(round_no: int, _w: Weights) -> dict[str, float]:
        return {"accuracy": accuracies[round_no - 1]}

    resumed = Fleet(2, config(patience=2), evaluate=evaluate, resume=first.rounds.checkpoint())
    resumed.start()
    resumed.run_to_end()
    # the best was round 1, before the restart: round 3 is the second without improvement
    assert resumed.rounds.completed_rounds == 3
    assert "(best 0.7000 in round 1)" in resumed.rounds.message


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"patience": 0}, "patience must be >= 1"),
        ({"patience": 3, "evaluate": False}, "needs server-side evaluation"),
        ({"min_delta": -0.1}, "min_delta must be in"),
    ],
)
def test_bad_patience_is_refused(overrides: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        config(**overrides)
