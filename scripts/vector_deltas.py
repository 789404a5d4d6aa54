"""The delta-coded model vectors of protocol/vectors/deltas.json (docs/PROTOCOL.md §15).

Imported by scripts/make_vectors.py. Each chain starts from the golden model and moves
it, version by version, towards fixed targets with the coordinator's own encoder
(:func:`protocol.broadcast.encode_step`, its rng keyed as §15.1 says); a receiver checks
that decoding each ``hex`` and applying it to the version before gives ``version`` (the
float32 bits) and ``model_id``. ``rejects`` are messages a receiver must refuse, with
the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np

from protocol import ModelDelta, TrainPlan, encode_model_delta, weights_digest
from protocol.broadcast import apply_delta, delta_rng, encode_step

BASE = {
    "w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype="<f4"),
    "b": np.array([0.5, -0.5], dtype="<f4"),
}
#: chains of deterministic (or seeded) codecs, float32 and float16 broadcast models
CHAINS = [("int8", "<f4"), ("qsgd:2", "<f4"), ("topk:0.5+int8", "<f4"), ("fp16", "<f2")]


def _targets() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    out, g = [], BASE
    for _ in range(3):
        g = {n: (a + rng.normal(0.0, 0.25, a.shape)).astype("<f4") for n, a in g.items()}
        out.append(g)
    return out


def _message(base_id: str | None, model_id: str, codec: str | None, *, dtype: str,
             entries: list[dict[str, Any]], round_no: int) -> ModelDelta:
    return ModelDelta(
        job="demo", run="r1", round=round_no, model_id=model_id, task="mnist-2nn",
        plan=TrainPlan(epochs=1, batch_size=32, lr=0.05, seed=0, options={}), codec="none",
        deadline_s=30.0, base_id=base_id, delta_codec=codec, dtype=dtype,
        tensors=tuple(entries), issued_at=1_700_000_000.0,
    )


def _start(dtype: str) -> dict[str, np.ndarray]:
    return BASE if dtype == "<f4" else {n: a.astype("<f2").astype("<f4") for n, a in BASE.items()}


def _chain(codec: str, dtype: str, tensors_doc: Callable[[Any], Any]) -> dict[str, Any]:
    version = _start(dtype)
    steps = []
    for k, target in enumerate(_targets(), start=1):
        base_id = weights_digest(version)
        entries, version = encode_step(version, target, codec, dtype, delta_rng(0, k))
        message = _message(base_id, weights_digest(version), codec, dtype=dtype,
                           entries=entries, round_no=k + 1)
        steps.append({
            "target": tensors_doc(target),
            "entries_msgpack": msgpack.packb(entries, use_bin_type=True).hex(),
            "hex": encode_model_delta(message).hex(),
            "base_id": base_id,
            "version": tensors_doc(version),
            "model_id": weights_digest(version),
        })
    start = _start(dtype)
    return {"delta_codec": codec, "dtype": dtype, "seed": 0, "start": tensors_doc(start),
            "start_model_id": weights_digest(start), "steps": steps}


def delta_vectors(tensors_doc: Callable[[Any], Any]) -> dict[str, Any]:
    chains = [_chain(codec, dtype, tensors_doc) for codec, dtype in CHAINS]
    notice = _message(None, weights_digest(BASE), None, dtype="<f4", entries=[], round_no=1)
    entries, built = encode_step(BASE, _targets()[0], "int8", "<f4")
    good = _message(weights_digest(BASE), weights_digest(built), "int8", dtype="<f4",
                    entries=entries, round_no=2)
    wrong_id = replace(good, model_id="0" * 32)
    flipped = [dict(e) for e in entries]
    q = dict(flipped[0]["q"])
    q["data"] = bytes([(q["data"][0] + 1) % 128]) + q["data"][1:]
    flipped[0]["q"] = q
    assert weights_digest(apply_delta(BASE, flipped, "int8", "<f4")) != good.model_id
    rejects = [
        {"name": "base-without-codec", "hex": encode_model_delta(
            replace(good, delta_codec=None)).hex(), "reason": "malformed", "at": "decode"},
        {"name": "base-without-tensors", "hex": encode_model_delta(
            replace(good, tensors=())).hex(), "reason": "malformed", "at": "decode"},
        {"name": "notice-with-tensors", "hex": encode_model_delta(
            replace(good, base_id=None)).hex(), "reason": "malformed", "at": "decode"},
        {"name": "dtype-f8", "hex": encode_model_delta(
            replace(good, dtype="<f8")).hex(), "reason": "malformed", "at": "decode"},
        {"name": "wrong-model-id", "hex": encode_model_delta(wrong_id).hex(),
         "reason": "digest_mismatch", "at": "apply"},
        {"name": "a-changed-level", "hex": encode_model_delta(
            replace(good, tensors=tuple(flipped))).hex(), "reason": "digest_mismatch",
         "at": "apply"},
        {"name": "another-codec", "hex": encode_model_delta(
            replace(good, delta_codec="fp16")).hex(), "reason": "bad_codec", "at": "apply"},
    ]
    return {"base": tensors_doc(BASE), "base_model_id": weights_digest(BASE),
            "chains": chains, "notice": {"hex": encode_model_delta(notice).hex()},
            "rejects": rejects}
