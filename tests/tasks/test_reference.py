"""The in-process reference: DESIGN.md's W1 figures, the digits demo target, the oracle.

Runs use ``threads=1``: on a busy two-core host torch's default thread pool
makes these small matmuls up to ten times slower, and the results are the same.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedmq_tools import reference
from fedmq_tools.reference import fedavg, run_centralised, run_reference, send_delta
from tests.needs import require_mnist

#: DESIGN.md, "Workload W1": accuracy after rounds 1, 2, 3 (IID)
W1_FIRST_ROUNDS = [0.2052, 0.5182, 0.5864]
#: DESIGN.md: accuracy after round 20 for each split
W1_ROUND_20 = {"iid": 0.8996, "noniid": 0.8256}
#: "within float rounding": one test image in 5,000 is 0.0002; allow five
TOLERANCE = 0.001


@pytest.fixture(scope="module")
def mnist_dir() -> None:
    require_mnist()


def test_fedavg_is_the_sample_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    models = [
        {
            "a": rng.normal(size=(3, 2)).astype(np.float32),
            "b": rng.normal(size=4).astype(np.float32),
        }
        for _ in range(3)
    ]
    samples = [10, 30, 60]
    mean = fedavg(list(zip(models, samples, strict=True)))
    for name in ("a", "b"):
        by_hand = (
            sum(m[name].astype(np.float64) * n for m, n in zip(models, samples, strict=True)) / 100
        )
        assert mean[name].dtype == np.float32
        np.testing.assert_allclose(mean[name], by_hand, rtol=1e-6)


def test_w1_first_rounds(mnist_dir: None) -> None:
    run = run_reference("iid", rounds=3, threads=1)
    assert run["accuracy"] == pytest.approx(W1_FIRST_ROUNDS, abs=TOLERANCE)
    assert run["agents"] == 20 and run["partition"] == "iid" and len(run["round_s"]) == 3
    assert run["wall_s"] >= sum(run["round_s"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["iid", "noniid"])
def test_w1_round_20(mnist_dir: None, variant: str) -> None:
    run = run_reference(variant, rounds=20, threads=1)
    assert run["accuracy"][-1] == pytest.approx(W1_ROUND_20[variant], abs=TOLERANCE)
    if variant == "iid":
        assert run["accuracy"][:3] == pytest.approx(W1_FIRST_ROUNDS, abs=TOLERANCE)


def test_digits_demo_reaches_ninety_percent() -> None:
    run = run_reference("iid", rounds=10, task="digits", agents=10, threads=1)
    assert run["accuracy"][-1] is not None and run["accuracy"][-1] >= 0.90


def test_codec_round_trip() -> None:
    plain = run_reference("iid", rounds=2, task="mlp", agents=3, threads=1)
    none = run_reference("iid", rounds=2, task="mlp", agents=3, codec="none")
    fp16 = run_reference("iid", rounds=2, task="mlp", agents=3, codec="fp16")
    for name, w in plain["weights"].items():
        np.testing.assert_allclose(none["weights"][name], w, atol=1e-6)
        np.testing.assert_allclose(fp16["weights"][name], w, atol=1e-2)
    assert fp16["model_id"] != plain["model_id"]
    with pytest.raises(ValueError, match=r"unknown codec.*'zip'"):
        run_reference("iid", rounds=1, task="mlp", agents=2, codec="zip")


def test_error_feedback_keeps_what_was_not_sent() -> None:
    rng = np.random.default_rng(0)
    delta = {"w": rng.normal(size=(40, 30)).astype(np.float32)}
    sent, residual = send_delta(delta, None, "topk:0.1", np.random.default_rng(1))
    assert np.count_nonzero(sent["w"]) == 120
    np.testing.assert_allclose(sent["w"] + residual["w"], delta["w"], atol=1e-6)
    sent2, residual2 = send_delta(delta, residual, "none", np.random.default_rng(1))
    np.testing.assert_allclose(sent2["w"], delta["w"] + residual["w"], atol=1e-6)
    assert not residual2["w"].any()


def test_lossy_codec_still_learns() -> None:
    plain = run_reference("iid", rounds=5, task="digits", agents=5, threads=1)
    lossy = run_reference(
        "iid", rounds=5, task="digits", agents=5, codec="topk:0.1+int8", threads=1
    )
    assert lossy["accuracy"][-1] is not None and plain["accuracy"][-1] is not None
    assert lossy["accuracy"][-1] > plain["accuracy"][-1] - 0.1


def test_regression_and_partitions() -> None:
    run = run_reference("shards", rounds=3, task="linreg", agents=4, threads=1)
    assert run["accuracy"] == [None, None, None]
    assert run["loss"][-1] < 0.05 and run["partition"] == "shards"
    assert reference.VARIANTS["noniid"] == "shards"


def test_same_inputs_same_model() -> None:
    a = run_reference("shards", rounds=2, task="mlp", agents=4, threads=1)
    b = run_reference("shards", rounds=2, task="mlp", agents=4, threads=1)
    assert a["model_id"] == b["model_id"]
    assert (
        a["model_id"]
        != run_reference("shards", rounds=2, task="mlp", agents=4, seed=1, threads=1)["model_id"]
    )


def test_centralised_baseline() -> None:
    run = run_centralised(epochs=3, task="digits", threads=1)
    assert len(run["accuracy"]) == 3 and run["epochs"] == 3
    assert run["accuracy"][-1] is not None and run["accuracy"][-1] > 0.9
