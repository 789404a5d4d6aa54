"""The float16 downlink: agents train from the narrowed model, the coordinator keeps float32.

The model id must name what agents receive (their updates echo it as their base),
and the round must add the mean delta to the coordinator's own float32 weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator import RoundConfig
from protocol import Phase, weights_digest
from protocol.compress import downlink_weights
from tests.helpers import Fleet, initial_weights

JOB, TASK = "job1", "linreg"


def config(**overrides: object) -> RoundConfig:
    settings: dict[str, object] = {
        "job": JOB,
        "task": TASK,
        "rounds": 3,
        "deadline_s": 10.0,
        "min_agents": 3,
    }
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def fp16(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: a.astype(np.float16).astype(np.float32) for n, a in weights.items()}


# Weights with float16 rounding error in every element, so narrowing is visible.
W = {n: (a + np.float32(1 / 3)).astype(np.float32) for n, a in initial_weights().items()}


@pytest.mark.parametrize("codec", ["none", "topk:0.5+int8+zstd"])
def test_fp16_downlink_run_accepts_every_update_and_keeps_a_float32_global(codec: str) -> None:
    fleet = Fleet(3, config(downlink="fp16", codec=codec), weights=W)
    fleet.start()
    assert fleet.rounds.phase is Phase.DONE
    assert fleet.rejections() == []  # no BASE_MISMATCH: agents echo the id of what they got
    assert [m.accepted for m in fleet.closed()] == [3, 3, 3]
    final = fleet.retained_model()
    assert final.done
    # what travels is the float16 model, named by its own digest ...
    for n, a in fleet.weights.items():
        np.testing.assert_array_equal(final.weights[n], a.astype(np.float16).astype(np.float32))
    assert final.model_id == weights_digest(fp16(fleet.weights))
    # ... while the coordinator's global is float32 and not itself rounded to float16
    assert all(a.dtype == np.float32 for a in fleet.weights.values())
    assert any(not np.array_equal(a, fp16({n: a})[n]) for n, a in fleet.weights.items())
    for agent in fleet.agents.values():
        assert agent.latest_model is not None
        assert agent.latest_model.model_id == final.model_id


def test_fp16_downlink_round_adds_the_mean_delta_to_the_float32_model() -> None:
    fp32 = Fleet(3, config(rounds=1), weights=W)
    half = Fleet(3, config(rounds=1, downlink="fp16"), weights=W)
    fp32.start()
    half.start()
    # Agents trained from fp16(W): their deltas differ slightly from the fp32 run's, and
    # the coordinator applied them to W itself, not to fp16(W).
    for n in W:
        np.testing.assert_allclose(half.weights[n], fp32.weights[n], atol=2e-3)
        assert not np.array_equal(half.weights[n], fp16(half.weights)[n])


def test_fp16_downlink_halves_the_model_bytes() -> None:
    sizes = {}
    for downlink in ("fp32", "fp16"):
        fleet = Fleet(3, config(rounds=1, downlink=downlink), weights=W)
        fleet.start()
        sizes[downlink] = fleet.closed()[0].bytes_down
    n = sum(a.size for a in W.values())
    # every one of the 3 agents received the model once: 2 bytes a weight saved each time
    assert sizes["fp32"] - sizes["fp16"] == 3 * 2 * n


def test_downlink_weights_fp32_is_the_identity_and_fp16_narrows() -> None:
    assert downlink_weights(W, "fp32") is W
    assert all(a.dtype == np.float16 for a in downlink_weights(W, "fp16").values())


def test_unknown_downlink_is_a_config_error() -> None:
    with pytest.raises(ValueError):
        config(downlink="bf16")
