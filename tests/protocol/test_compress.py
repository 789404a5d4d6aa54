"""Update codecs: decode_delta checks every entry against the model before using it."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import CODECS, RejectReason, WireError, check_codec, decode_delta, encode_delta

SHAPES = {"w": (2, 3), "b": (3,), "s": ()}
DELTA = {n: np.arange(np.prod(s), dtype=np.float32).reshape(s) * 0.5 for n, s in SHAPES.items()}


def entries(codec: str = "none") -> list[dict[str, Any]]:
    return encode_delta(DELTA, codec)


def rejects(items: list[dict[str, Any]], codec: str, reason: RejectReason) -> WireError:
    with pytest.raises(WireError) as info:
        decode_delta(items, codec, SHAPES)
    assert info.value.reason is reason, info.value
    return info.value


def test_builtin_codecs():
    assert {"none", "fp16"} <= set(CODECS)
    assert [e["dtype"] for e in entries("none")] == ["<f4"] * 3
    assert [e["dtype"] for e in entries("fp16")] == ["<f2"] * 3
    for codec in ("none", "fp16"):
        assert check_codec(codec) == codec
        got = decode_delta(entries(codec), codec, SHAPES)
        assert list(got) == list(SHAPES)
        for name, want in DELTA.items():
            np.testing.assert_array_equal(got[name], want)  # all exact in float16 too


@pytest.mark.parametrize("codec", ["gzip", "", "FP16", "None", "fp16 ", "q8", "fp32"])
def test_reject_unknown_codec(codec):
    rejects(entries(), codec, RejectReason.BAD_CODEC)
    with pytest.raises(ValueError):
        check_codec(codec)


@pytest.mark.parametrize(
    ("written_with", "announced"),
    [("none", "fp16"), ("fp16", "none")],
    ids=["f4-as-fp16", "f2-as-none"],
)
def test_reject_entry_from_another_codec(written_with, announced):
    rejects(entries(written_with), announced, RejectReason.BAD_CODEC)


@pytest.mark.parametrize("dtype", ["<f8", "|u1", "<i4", ">f4", None, 5, "float32"])
def test_reject_wrong_entry_dtype(dtype):
    items = entries()
    items[1]["dtype"] = dtype
    err = rejects(items, "none", RejectReason.BAD_CODEC)
    assert err.detail.startswith("b:")


def _renamed(items, old, new):
    return [{**e, "name": new} if e["name"] == old else e for e in items]


NAME_MISMATCHES = {
    "missing": lambda items: items[:-1],
    "extra": lambda items: [*items, {**items[0], "name": "extra"}],
    "renamed": lambda items: _renamed(items, "b", "bias"),
    "reordered": lambda items: [items[1], items[0], items[2]],
    "duplicated": lambda items: [items[0], items[0], items[2]],
    "empty": lambda items: [],
    "name-missing": lambda items: [{k: v for k, v in items[0].items() if k != "name"}, *items[1:]],
    "name-not-str": lambda items: _renamed(items, "w", 0),
}


@pytest.mark.parametrize("mutate", list(NAME_MISMATCHES.values()), ids=list(NAME_MISMATCHES))
def test_reject_names_mismatch(mutate):
    rejects(mutate(entries()), "none", RejectReason.TENSOR_MISMATCH)


SHAPE_MISMATCHES = {
    "transposed": [3, 2],
    "flattened": [6],
    "extra-dim": [2, 3, 1],
    "scalar": [],
    "bigger": [2, 4],
}


@pytest.mark.parametrize("shape", list(SHAPE_MISMATCHES.values()), ids=list(SHAPE_MISMATCHES))
def test_reject_shape_mismatch(shape):
    items = entries()
    count = int(np.prod(shape)) if shape else 1
    # Consistent entries (bytes match the claimed shape): only the model disagrees.
    items[0] = {**items[0], "shape": shape, "data": bytes(4 * count)}
    rejects(items, "none", RejectReason.TENSOR_MISMATCH)


def test_reject_scalar_given_a_shape():
    items = entries()
    items[2] = {**items[2], "shape": [1]}
    rejects(items, "none", RejectReason.TENSOR_MISMATCH)


@pytest.mark.parametrize("shape", [None, 6, "23", {"0": 2}, True])
def test_reject_shape_not_a_list(shape):
    items = entries()
    items[0] = {**items[0], "shape": shape}
    rejects(items, "none", RejectReason.MALFORMED)


@pytest.mark.parametrize("codec", ["none", "fp16"])
def test_reject_bad_bytes(codec):
    items = entries(codec)
    items[0] = {**items[0], "data": items[0]["data"][:-1]}
    rejects(items, codec, RejectReason.MALFORMED)
    items = entries(codec)
    items[1] = {**items[1], "data": "not bytes"}
    rejects(items, codec, RejectReason.MALFORMED)


@pytest.mark.parametrize("codec", ["none", "fp16"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_reject_non_finite_delta(codec, value):
    bad = copy.deepcopy(DELTA)
    bad["b"] = bad["b"].copy()
    bad["b"][1] = value
    rejects(encode_delta(bad, codec), codec, RejectReason.NON_FINITE)


def test_decode_does_not_modify_entries():
    items = entries("fp16")
    before = copy.deepcopy(items)
    decode_delta(items, "fp16", SHAPES)
    assert items == before


entry_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=30),
    st.lists(st.integers(-2, 8), max_size=4),
)


@given(
    codec=st.sampled_from(["none", "fp16"]),
    index=st.integers(0, 2),
    key=st.sampled_from(["name", "dtype", "shape", "data", "extra"]),
    value=entry_values,
)
def test_fuzz_entries_decode_or_reject(codec, index, key, value):
    items = entries(codec)
    items[index] = {**items[index], key: value}
    try:
        got = decode_delta(items, codec, SHAPES)
    except WireError:
        return
    assert {n: a.shape for n, a in got.items()} == SHAPES
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in got.values())
