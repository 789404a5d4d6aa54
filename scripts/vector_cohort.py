"""The hashed-cohort vectors of protocol/vectors/cohort.json (docs/PROTOCOL.md §17).

64-bit numbers are written as decimal strings: a JSON reader may hold numbers as
float64, which cannot carry every uint64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from protocol import ModelAnnouncement, RejectReason, WireError, decode_model, encode_model
from protocol.cohort_hash import (
    MAX_BELOW,
    CohortHash,
    below_for,
    cohort_value,
    hash_input,
    in_cohort,
)

#: the worked example of docs/PROTOCOL.md §17 first, then other rounds, jobs and thresholds
_EXAMPLE = ("pi-01", "pi-02", "pi-03", "pi-04", "phone-7")
_CASES = [
    *(("demo", "r1", 3, agent, 1 << 62) for agent in _EXAMPLE),
    *(("demo", "r1", 4, agent, 1 << 62) for agent in ("pi-01", "pi-02", "pi-03", "pi-04")),
    ("other", "r1", 3, "pi-01", 1 << 62),
    ("demo", "run-2026.12", 2**53, "Agent_9", below_for(0.1)),
    ("demo", "r1", 3, "pi-02", MAX_BELOW),
    ("demo", "r1", 3, "pi-04", 1),
]


def _hash_case(job: str, run: str, round_no: int, agent: str, below: int) -> dict[str, Any]:
    value = cohort_value(job, run, round_no, agent)
    return {
        "job": job, "run": run, "round": round_no, "agent": agent,
        "text": hash_input(job, run, round_no, agent).decode(),
        "first8": value.to_bytes(8, "big").hex(),
        "value": str(value),
        "below": str(below),
        "in": in_cohort(CohortHash(below), job, run, round_no, agent),
    }


def _reject(name: str, model: bytes, change: dict[str, Any]) -> dict[str, Any]:
    """``model`` (an encoded announcement) with ``change`` made, and the reason it earns."""
    obj = msgpack.unpackb(model, raw=False)
    obj.update(change)
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    try:
        decode_model(payload)
    except WireError as exc:
        return {"name": name, "hex": payload.hex(), "reason": exc.reason.value}
    raise AssertionError(f"{name}: Python accepts it")


def cohort_vectors(
    golden: Callable[..., ModelAnnouncement], vector: Callable[[str, ModelAnnouncement], Any]
) -> dict[str, Any]:
    """The file's document: hash cases, fractions, one announcement, must-reject ones."""
    model = golden(round=3, cohort_hash=CohortHash(1 << 62))
    announcement = vector("model-cohort-hash", model)
    announcement["message"]["cohort_hash"] = {"below": str(1 << 62)}
    plain = encode_model(golden(round=3))
    rejects = [
        _reject("named-and-hashed", plain, {"cohort": ["pi-01"], "cohort_hash": {"below": 5}}),
        _reject("below-zero", plain, {"cohort_hash": {"below": 0}}),
        _reject("below-float", plain, {"cohort_hash": {"below": 0.5}}),
        _reject("below-bool", plain, {"cohort_hash": {"below": True}}),
        _reject("extra-key", plain, {"cohort_hash": {"below": 5, "seed": 1}}),
        _reject("not-a-map", plain, {"cohort_hash": [5]}),
    ]
    assert all(r["reason"] == RejectReason.MALFORMED.value for r in rejects)
    return {
        "hashes": [_hash_case(*c) for c in _CASES],
        "fractions": [
            {"fraction": f, "below": str(below_for(float(f)))}
            for f in ("0.25", "0.1", "0.01", "1", "1e-30")
        ],
        "announcement": announcement,
        "rejects": rejects,
    }
