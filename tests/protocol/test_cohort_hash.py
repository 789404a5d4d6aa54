"""The hashed cohort (docs/PROTOCOL.md §17): the hash, the field, the shared vectors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from protocol import RejectReason, WireError, decode_model, encode_model
from protocol.cohort_hash import (
    MAX_BELOW,
    CohortHash,
    asks,
    below_for,
    cohort_value,
    decode_cohort_hash,
    in_cohort,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "protocol/vectors/cohort.json").read_text()
)


@pytest.mark.parametrize("case", VECTORS["hashes"], ids=lambda c: c["text"])
def test_hash_vectors(case):
    job, run, r, agent = case["job"], case["run"], case["round"], case["agent"]
    digest = hashlib.sha256(case["text"].encode()).digest()
    assert digest[:8].hex() == case["first8"]
    value = cohort_value(job, run, r, agent)
    assert value == int(case["value"]) == int(case["first8"], 16)
    assert in_cohort(CohortHash(int(case["below"])), job, run, r, agent) is case["in"]


def test_the_worked_example_of_the_protocol_doc():
    """docs/PROTOCOL.md §17's table: at 2^62, pi-01, pi-04 and phone-7 of round 3 pass."""
    rule = CohortHash(below_for(0.25))
    assert rule.below == 1 << 62
    passing = [a for a in ("pi-01", "pi-02", "pi-03", "pi-04", "phone-7")
               if in_cohort(rule, "demo", "r1", 3, a)]
    assert passing == ["pi-01", "pi-04", "phone-7"]


@pytest.mark.parametrize("case", VECTORS["fractions"], ids=lambda c: c["fraction"])
def test_fraction_vectors(case):
    assert below_for(float(case["fraction"])) == int(case["below"])


def test_below_is_clamped_to_what_msgpack_carries():
    assert below_for(1.0) == MAX_BELOW == 2**64 - 1
    assert below_for(1e-30) == 1


def test_announcement_vector_both_ways():
    v = VECTORS["announcement"]
    m = decode_model(bytes.fromhex(v["hex"]))
    assert m.cohort is None
    assert m.cohort_hash == CohortHash(int(v["message"]["cohort_hash"]["below"]))
    assert encode_model(m).hex() == v["hex"]


@pytest.mark.parametrize("case", VECTORS["rejects"], ids=lambda c: c["name"])
def test_reject_vectors(case):
    with pytest.raises(WireError) as err:
        decode_model(bytes.fromhex(case["hex"]))
    assert err.value.reason.value == case["reason"]


@pytest.mark.parametrize("below", [0, -1, 2**64, 1.0, True, "5", None])
def test_decoder_refuses_bad_thresholds(below):
    with pytest.raises(WireError) as err:
        decode_cohort_hash({"below": below}, "model")
    assert err.value.reason is RejectReason.MALFORMED


def test_asks_follows_the_field_that_is_set():
    v = decode_model(bytes.fromhex(VECTORS["announcement"]["hex"]))
    assert [asks(v, a) for a in ("pi-01", "pi-02", "pi-04")] == [True, False, True]
    everyone = dataclasses.replace(v, cohort_hash=None)
    assert asks(everyone, "pi-02")
    named = dataclasses.replace(everyone, cohort=("pi-02",))
    assert asks(named, "pi-02") and not asks(named, "pi-01")


def test_field_is_absent_unless_set():
    """A plain announcement keeps its exact bytes (no `cohort_hash` key written)."""
    m = decode_model(bytes.fromhex(VECTORS["announcement"]["hex"]))
    plain = encode_model(dataclasses.replace(m, cohort_hash=None))
    assert b"cohort_hash" not in plain
    assert len(encode_model(m)) - len(plain) == 28  # the §17 field: 28 bytes
