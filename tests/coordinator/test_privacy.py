"""DP-FedAvg: clipped fixed-denominator mean, Gaussian noise of the stated std, the accountant's
epsilon in every round's metrics; pure, fixed seeds."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from coordinator import Action, RoundConfig, SaveCheckpoint, load_checkpoint
from coordinator.privacy import NoisySum, PrivacyLedger
from coordinator.robust import NormClip
from protocol import ClosedBy, Phase, RoundMetrics, WireError, decode_metrics, encode_metrics
from tests.helpers import Fleet, weights_equal

SHAPES = {"x": (200_000,)}


def config(**overrides: Any) -> RoundConfig:
    settings: dict[str, Any] = {"job": "job1", "task": "linreg", "rounds": 4, "deadline_s": 10.0,
                                "min_agents": 4, "dp_noise": 1.1, "dp_clip": 1.0}
    settings.update(overrides)
    return RoundConfig(**settings)


def expected_epsilon(rates: list[float], z: float, delta: float) -> float:
    accountant = RdpAccountant()
    for q in rates:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)))
    return float(accountant.get_epsilon(delta))


# --- the noisy sum ---------------------------------------------------------------------------


def test_noise_has_the_stated_std() -> None:
    z, clip, cohort = 1.3, 0.5, 10
    noisy = NoisySum(SHAPES, clip=clip, noise_multiplier=z, denominator=cohort, seed=[4, 1])
    noisy.add({"x": np.zeros(SHAPES["x"], np.float32)}, 1)
    noise = noisy.result().delta["x"].astype(np.float64)
    sigma = z * clip / cohort
    assert noisy.noise_std == pytest.approx(sigma)
    # n = 200,000 draws: the sample std is within 1% (the standard error is 0.16%) ...
    assert abs(noise.std() / sigma - 1) < 0.01
    # ... the mean within 5 standard errors of 0, and the tails Gaussian
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(noise.size)
    assert np.mean(np.abs(noise) > 2 * sigma) == pytest.approx(0.0455, abs=0.003)


def test_noise_is_reproducible_for_a_seed_and_changes_with_the_round() -> None:
    def draw(seed: list[int]) -> np.ndarray[Any, Any]:
        noisy = NoisySum({"x": (64,)}, clip=1.0, noise_multiplier=1.0, denominator=2, seed=seed)
        noisy.add({"x": np.zeros(64, np.float32)}, 1)
        first, again = noisy.result(), noisy.result()
        assert np.array_equal(first.delta["x"], again.delta["x"])
        return first.delta["x"]

    assert np.array_equal(draw([0, 1]), draw([0, 1]))
    assert not np.array_equal(draw([0, 1]), draw([0, 2]))


def test_no_noise_when_z_is_zero_and_the_denominator_is_fixed() -> None:
    clip, cohort = 1.0, 4
    agg = NormClip(
        NoisySum({"x": (3,)}, clip=clip, noise_multiplier=0.0, denominator=cohort, seed=[0, 1]),
        clip,
    )
    big = np.array([3.0, 4.0, 0.0], np.float32)  # norm 5: clipped to norm 1
    small = np.array([0.25, 0.0, 0.5], np.float32)  # within the norm: untouched
    agg.add({"x": big}, 500)  # sample counts do not weigh
    agg.add({"x": small}, 1)
    got = agg.result().delta["x"]
    # two of a cohort of four replied: divided by 4, not 2, and no noise at all
    want = (np.array([0.6, 0.8, 0.0]) + np.array([0.25, 0.0, 0.5])) / 4
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-7)
    assert agg.clipped == 1


# --- the ledger --------------------------------------------------------------------------------


def test_ledger_epsilon_equals_the_accountant_library() -> None:
    ledger = PrivacyLedger(1e-5)
    rates = [0.1, 0.1, 0.25]
    for i, q in enumerate(rates, start=1):
        assert ledger.record(q, 1.1) == expected_epsilon(rates[:i], 1.1, 1e-5)
    replayed = PrivacyLedger(1e-5, ledger.rounds)
    assert replayed.record(0.1, 1.1) == ledger.record(0.1, 1.1)


def test_ledger_reports_none_without_noise() -> None:
    assert PrivacyLedger(1e-5).record(0.5, 0.0) is None


# --- rounds ------------------------------------------------------------------------------------


def test_every_round_reports_the_accountants_epsilon() -> None:
    fleet = Fleet(4, config(sample_count=2, dp_delta=1e-4))
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE
    epsilons = [m.epsilon for m in fleet.history]
    want = [expected_epsilon([0.5] * r, 1.1, 1e-4) for r in range(1, 5)]
    assert epsilons == want
    assert want == sorted(set(want))  # each round spends more
    # and it travels: the published metrics carry it
    assert decode_metrics(encode_metrics(fleet.history[-1])).epsilon == want[-1]


def test_dp_round_model_is_the_clipped_fixed_denominator_mean_plus_the_stated_noise() -> None:
    quiet = Fleet(4, config(rounds=1, dp_noise=0.0, dp_clip=0.05))
    quiet.start()
    noisy = Fleet(4, config(rounds=1, dp_noise=2.0, dp_clip=0.05))
    noisy.start()
    assert quiet.history[0].epsilon is None and noisy.history[0].epsilon is not None
    rng = np.random.default_rng([0, 1])  # dp_seed 0, round 1
    sigma = 2.0 * 0.05 / 4
    flat = np.concatenate([quiet.weights[n].ravel().astype(np.float64) for n in quiet.weights])
    got = np.concatenate([noisy.weights[n].ravel().astype(np.float64) for n in noisy.weights])
    np.testing.assert_allclose(got - flat, rng.normal(0.0, sigma, flat.size), atol=1e-6)


def test_dp_resume_equals_uninterrupted(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    cfg = config(sample_count=3, server_opt="fedadam:lr=0.05")
    uninterrupted = Fleet(4, cfg)
    uninterrupted.start()
    fleet = Fleet(4, cfg, checkpoint_path=path)

    def hook(f: Fleet, action: Action) -> None:
        if isinstance(action, SaveCheckpoint) and action.checkpoint.round == 2:
            f.crash_coordinator()

    fleet.on_action = hook
    fleet.start()
    fleet.on_action = None
    assert load_checkpoint(path).dp_rounds == ((0.75, 1.1), (0.75, 1.1))
    fleet.restart_coordinator(resume=load_checkpoint(path))
    assert fleet.rounds.phase is Phase.DONE
    assert weights_equal(fleet.weights, uninterrupted.weights)
    assert [m.epsilon for m in fleet.history] == [m.epsilon for m in uninterrupted.history]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"dp_clip": None}, "DP needs dp_clip"),
        ({"dp_noise": None}, "dp_clip needs dp_noise"),
        ({"dp_noise": -1.0}, "must be >= 0"),
        ({"dp_delta": 0.0}, "dp_delta must be in"),
        ({"aggregator": "median"}, "DP-FedAvg replaces the aggregator"),
        ({"clip_norm": 2.0}, "DP-FedAvg replaces the aggregator"),
    ],
)
def test_bad_dp_settings_are_refused(overrides: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        config(**overrides)


# --- the wire ----------------------------------------------------------------------------------

METRICS = RoundMetrics(job="demo", run="r1", round=1, closed_by=ClosedBy.QUORUM, accepted=2,
                       declined=0, rejected={}, samples=10, duration_s=1.0, bytes_up=1,
                       bytes_down=1, raw_bytes_up=1, at=1.0)


def test_epsilon_is_written_only_when_known() -> None:
    assert "epsilon" not in json.loads(encode_metrics(METRICS))
    with_eps = dataclasses.replace(METRICS, epsilon=2.5)
    assert json.loads(encode_metrics(with_eps))["epsilon"] == 2.5
    assert decode_metrics(encode_metrics(with_eps)) == with_eps


@pytest.mark.parametrize("bad", [-1.0, "2", True, float("inf")])
def test_a_bad_epsilon_is_refused(bad: object) -> None:
    doc = json.loads(encode_metrics(METRICS))
    doc["epsilon"] = bad
    with pytest.raises(WireError):
        decode_metrics(json.dumps(doc).encode())
