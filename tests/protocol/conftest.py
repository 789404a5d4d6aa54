"""Shared fixtures for the protocol tests: one valid message of every kind.

Fixtures rather than imports: test modules cannot import a conftest reliably.

The tests here are pure: no broker, no clock, no files. The valid messages are
deliberately different from the golden vectors (a cohort, fp16 weights, plan
options) so that rejection and fuzz tests start from another corner of the format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np
import pytest

from protocol import (
    ClosedBy,
    ModelAnnouncement,
    Phase,
    Presence,
    RoundMetrics,
    Status,
    TrainPlan,
    Update,
    decode_metrics,
    decode_model,
    decode_presence,
    decode_status,
    decode_update,
    encode_delta,
    encode_metrics,
    encode_model,
    encode_presence,
    encode_status,
    encode_update,
    weights_digest,
)


@dataclass(frozen=True, slots=True)
class Kind:
    """One message kind: how to write it, read it, and which container it travels in."""

    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    cls: type
    msgpack: bool


KINDS: dict[str, Kind] = {
    "model": Kind("model", encode_model, decode_model, ModelAnnouncement, True),
    "update": Kind("update", encode_update, decode_update, Update, True),
    "presence": Kind("presence", encode_presence, decode_presence, Presence, False),
    "status": Kind("status", encode_status, decode_status, Status, False),
    "metrics": Kind("metrics", encode_metrics, decode_metrics, RoundMetrics, False),
}

SHAPES = {"dense.w": (3, 2), "dense.b": (2,), "scale": ()}


def sample_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


def sample_messages() -> dict[str, Any]:
    weights = sample_weights()
    model_id = weights_digest(weights)
    delta = {n: (a * 0.01).astype(np.float32) for n, a in weights.items()}
    return {
        "model": ModelAnnouncement(
            job="job-a",
            run="run.7",
            round=3,
            model_id=model_id,
            task="toy",
            plan=TrainPlan(epochs=2, batch_size=8, lr=0.1, seed=5, options={"mu": 0.01}),
            codec="fp16",
            deadline_s=12.5,
            weights={n: a.astype("<f2") for n, a in weights.items()},
            attempt=1,
            cohort=("agent-1", "agent-2"),
            done=False,
            issued_at=1_700_000_100.25,
        ),
        "update": Update(
            job="job-a",
            agent="agent-1",
            round=3,
            model_id=model_id,
            samples=64,
            codec="fp16",
            tensors=tuple(encode_delta(delta, "fp16")),
            metrics={"loss": 0.75, "accuracy": 0.5},
            train_s=0.125,
        ),
        "presence": Presence(
            agent="agent-1", online=True, samples=64, device="esp32", trainer="numpy", at=1.5
        ),
        "status": Status(
            job="job-a",
            run="run.7",
            phase=Phase.TRAINING,
            round=3,
            rounds=10,
            attempt=1,
            accepted=0,
            quorum=2,
            min_replies=1,
            cohort_size=2,
            agents_online=2,
            deadline_at=None,
            rejected={"stale": 2, "duplicate": 1},
            at=2.0,
            message="retrying",
        ),
        "metrics": RoundMetrics(
            job="job-a",
            run="run.7",
            round=2,
            closed_by=ClosedBy.DEADLINE,
            accepted=1,
            declined=1,
            rejected={"non_finite": 1},
            samples=64,
            duration_s=12.5,
            bytes_up=100,
            bytes_down=200,
            raw_bytes_up=36,
            train_loss=0.75,
            at=3.0,
        ),
    }


def assert_same(got: Any, want: Any) -> None:
    """Field-by-field equality; weights compared as float32 arrays, in order."""
    assert type(got) is type(want)
    assert is_dataclass(got)
    for f in fields(got):
        g, w = getattr(got, f.name), getattr(want, f.name)
        if f.name == "weights":
            assert list(g) == list(w)
            for name in w:
                assert g[name].dtype == np.float32
                np.testing.assert_array_equal(g[name], np.asarray(w[name], dtype=np.float32))
        else:
            assert g == w, f.name


@pytest.fixture(scope="session")
def samples() -> dict[str, Any]:
    """One valid message per kind, keyed by kind name."""
    return sample_messages()


@pytest.fixture(scope="session")
def kinds() -> dict[str, Kind]:
    """Encoder, decoder and class per kind name."""
    return KINDS


@pytest.fixture(scope="session")
def same() -> Callable[[Any, Any], None]:
    """Assert two messages are equal, comparing weights as arrays."""
    return assert_same
