"""Update codec pipelines: the spec grammar, each codec's stated error bound, the wire
entries, and rejection of corrupted or truncated payloads (never garbage)."""

from __future__ import annotations

import copy
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import RejectReason, WireError, check_codec, decode_delta, encode_delta
from protocol.codecs.entropy import zstd_backend
from protocol.codecs.indices import decode_indices, encode_indices
from protocol.codecs.spec import Pipeline, Quantiser, parse_codec
from protocol.compress import downlink_weights, max_inner_size
from protocol.tensors import decode_weights, encode_weights

F16_MAX = 65504.0
TINY = float(np.finfo(np.float32).tiny)  # 2**-126
FP32_ULP = 2.0**-24  # float32's unit roundoff: the product q * step is rounded once

SHAPES = {"w": (20, 30), "b": (30,), "s": (), "e": (0, 4)}
RNG = np.random.default_rng(0)
DELTA = {n: RNG.normal(0, 0.1, size=s).astype(np.float32) for n, s in SHAPES.items()}

#: one spec per layout and stage, the pipelines the fuzz and rejection tests cover
SPECS = [
    "none",
    "fp16",
    "int8",
    "int8:block=64",
    "qsgd:8,block=32",
    "topk:0.1",
    "topk:0.1+fp16",
    "topk:0.1+int8",
    "topk:0.05+qsgd:16",
    "zstd",
    "topk:0.1+int8+zstd",
    "topk:0.01+int8:block=16+zstd:19",
]

names = st.text(min_size=1, max_size=12)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def deltas(draw: Any, elements: st.SearchStrategy[float] = f32) -> dict[str, np.ndarray]:
    keys = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    return {k: draw(hnp.arrays("<f4", shapes, elements=elements)) for k in keys}


def shapes_of(delta: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for k, v in delta.items()}


def roundtrip(delta: dict[str, np.ndarray], spec: str, seed: int = 0) -> dict[str, np.ndarray]:
    entries = encode_delta(delta, spec, np.random.default_rng(seed))
    entries = msgpack.unpackb(msgpack.packb(entries, use_bin_type=True), raw=False)  # the wire
    got = decode_delta(entries, spec, shapes_of(delta))
    assert list(got) == list(delta)
    for k, v in got.items():
        assert v.dtype == np.float32 and v.shape == delta[k].shape
    return got


def err(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(got.astype(np.float64) - want.astype(np.float64))


def steps_for(x: np.ndarray, levels: int, block: int) -> np.ndarray:
    """Each element's step as the codec docstring defines it: max(peak / levels, 2**-126)."""
    flat = np.abs(x.astype(np.float64).reshape(-1))
    size = block or max(flat.size, 1)
    out = np.empty_like(flat)
    for start in range(0, flat.size, size):
        out[start : start + size] = max(flat[start : start + size].max() / levels, TINY)
    return out


# --- the spec grammar ------------------------------------------------------------------------

GOOD_SPECS = {
    "none": Pipeline(),
    "fp16": Pipeline(quantiser=Quantiser("f2")),
    "int8": Pipeline(quantiser=Quantiser("int", 127, 0)),
    "int8:256": Pipeline(quantiser=Quantiser("int", 127, 256)),
    "int8:block=256": Pipeline(quantiser=Quantiser("int", 127, 256)),
    "qsgd": Pipeline(quantiser=Quantiser("int", 16, 0, stochastic=True)),
    "qsgd:4,block=512": Pipeline(quantiser=Quantiser("int", 4, 512, stochastic=True)),
    "qsgd:block=8,levels=3": Pipeline(quantiser=Quantiser("int", 3, 8, stochastic=True)),
    "topk": Pipeline(topk=0.01),
    "topk:1e-3": Pipeline(topk=0.001),
    "topk:1": Pipeline(topk=1.0),
    "zstd": Pipeline(zstd_level=3),
    "zstd:19": Pipeline(zstd_level=19),
    "fp16+zstd": Pipeline(quantiser=Quantiser("f2"), zstd_level=3),
    "topk:0.01+int8+zstd": Pipeline(0.01, Quantiser("int", 127, 0), 3),
    "topk:fraction=0.1+qsgd:16+zstd:level=1": Pipeline(
        0.1, Quantiser("int", 16, 0, stochastic=True), 1
    ),
}


@pytest.mark.parametrize("spec", list(GOOD_SPECS))
def test_spec_parses_to_its_pipeline(spec: str) -> None:
    assert parse_codec(spec) == GOOD_SPECS[spec]
    assert check_codec(spec) == spec


@pytest.mark.parametrize(
    ("spec", "lossless", "biased"),
    [
        ("none", True, False),
        ("zstd", True, False),
        ("qsgd:1+zstd", False, False),
        ("qsgd:4,block=64", False, False),
        ("fp16", False, True),
        ("int8", False, True),
        ("topk:0.5", False, True),
        ("topk:0.5+qsgd", False, True),
    ],
)
def test_which_pipelines_error_feedback_applies_to(spec: str, lossless: bool, biased: bool) -> None:
    assert (parse_codec(spec).lossless, parse_codec(spec).biased) == (lossless, biased)


BAD_SPECS = [
    "",
    "None",
    "fp16 ",
    " fp16",
    "gzip",
    "fp32",
    "int4",
    "none+zstd",
    "zstd+topk",
    "int8+topk",
    "zstd+int8",
    "fp16+int8",
    "topk+topk",
    "int8+",
    "+int8",
    "int8:",
    "int8:,",
    "int8:-1",
    "int8:1.5",
    "int8:08",
    "int8:block=16777217",
    "int8:levels=3",
    "int8:block=4,block=4",
    "int8:4,8",
    "qsgd:0",
    "qsgd:128",
    "qsgd:block=8,4",
    "qsgd:4,64,1",
    "qsgd:1,density=0.1",
    "topk:0",
    "topk:1.5",
    "topk:nan",
    "topk:inf",
    "topk:-0.1",
    "topk:0x1",
    "topk:0.1:0.2",
    "zstd:0",
    "zstd:23",
    "fp16:1",
    "INT8",
    "int8 + zstd",
    "a" * 300,
]


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_spec_is_a_local_value_error_and_a_peers_bad_codec(spec: str) -> None:
    with pytest.raises(ValueError):
        check_codec(spec)
    with pytest.raises(WireError) as info:
        decode_delta(encode_delta(DELTA, "none"), spec, SHAPES)
    assert info.value.reason is RejectReason.BAD_CODEC


@given(spec=st.text(max_size=30))
def test_any_string_parses_or_raises_value_error(spec: str) -> None:
    try:
        pipe = parse_codec(spec)
    except ValueError:
        return
    assert isinstance(pipe, Pipeline)


# --- each codec within its stated error bound ------------------------------------------------


@given(delta=deltas())
def test_none_and_zstd_are_exact(delta: dict[str, np.ndarray]) -> None:
    for spec in ("none", "zstd", "zstd:1"):
        got = roundtrip(delta, spec)
        for k, v in delta.items():
            np.testing.assert_array_equal(got[k], v)


@given(delta=deltas())
def test_fp16_within_half_precision_and_saturates_beyond_its_range(delta: dict) -> None:
    got = roundtrip(delta, "fp16")
    for k, x in delta.items():
        inside = np.abs(x) <= F16_MAX
        bound = np.abs(x.astype(np.float64)) * 2.0**-11 + 2.0**-25
        assert (err(got[k], x)[inside] <= bound[inside]).all()
        np.testing.assert_array_equal(got[k][~inside], np.sign(x[~inside]) * F16_MAX)


@pytest.mark.parametrize("block", [0, 1, 7, 64])
@given(delta=deltas())
def test_int8_within_half_a_step(block: int, delta: dict) -> None:
    spec = f"int8:block={block}"
    got = roundtrip(delta, spec)
    for k, x in delta.items():
        step = steps_for(x, 127, block)
        e = err(got[k], x).reshape(-1)
        assert (e <= step / 2 + FP32_ULP * (np.abs(x.reshape(-1)) + step)).all()


@pytest.mark.parametrize("spec", ["qsgd:1", "qsgd:4,block=5", "qsgd:127", "qsgd:1+zstd:19"])
@given(delta=deltas(), seed=st.integers(0, 2**32 - 1))
def test_qsgd_within_one_step(spec: str, delta: dict, seed: int) -> None:
    q = parse_codec(spec).quantiser
    got = roundtrip(delta, spec, seed)
    for k, x in delta.items():
        step = steps_for(x, q.levels, q.block)
        e = err(got[k], x).reshape(-1)
        assert (e <= step + FP32_ULP * (np.abs(x.reshape(-1)) + step)).all()


def test_qsgd_is_unbiased() -> None:
    x = np.array([0.3, -0.7, 1.0, 0.05, -0.999, 0.0, 0.5], dtype=np.float32)
    draws = 4000
    rng = np.random.default_rng(7)
    total = np.zeros(x.size)
    for _ in range(draws):
        total += decode_delta(encode_delta({"x": x}, "qsgd:2", rng), "qsgd:2", {"x": (7,)})["x"]
    step = 1.0 / 2  # peak 1.0, 2 levels; the per-draw variance is at most step**2 / 4
    six_sigma = 6 * (step / 2) / math.sqrt(draws)
    assert np.abs(total / draws - x).max() <= six_sigma


@pytest.mark.parametrize("spec", ["topk:0.1", "topk:0.3+fp16", "topk:0.2+int8", "topk:1"])
@given(delta=deltas(elements=st.floats(-1e4, 1e4, width=32)))
def test_topk_keeps_the_largest_and_drops_no_more_than_the_smallest_kept(
    spec: str, delta: dict
) -> None:
    pipe = parse_codec(spec)
    got = roundtrip(delta, spec)
    for k, x in delta.items():
        flat_x, flat_got = x.reshape(-1), got[k].reshape(-1)
        kept = np.zeros(flat_x.size, dtype=bool)
        idx = _sent_indices(delta, spec, k)
        kept[idx] = True
        assert kept.sum() == (math.ceil(pipe.topk * flat_x.size) if flat_x.size else 0)
        assert (flat_got[~kept] == 0).all()
        if kept.any() and (~kept).any():
            assert np.abs(flat_x[~kept]).max() <= np.abs(flat_x[kept]).min()
        # the kept values, as their quantiser promises
        xs, e = flat_x[kept].astype(np.float64), err(flat_got[kept], flat_x[kept])
        if pipe.quantiser.kind == "f4":
            assert (e == 0).all()
        elif pipe.quantiser.kind == "f2":
            assert (e <= np.abs(xs) * 2.0**-11 + 2.0**-25).all()
        else:
            step = steps_for(flat_x[kept], 127, 0)
            assert (e <= step / 2 + FP32_ULP * (np.abs(xs) + step)).all()


def _sent_indices(delta: dict, spec: str, name: str) -> np.ndarray:
    entry = next(e for e in encode_delta(delta, spec) if e["name"] == name)
    n = int(np.prod(delta[name].shape))
    return decode_indices(entry["idx"], parse_codec(spec).kept(n), n, name)


@pytest.mark.parametrize("spec", ["topk:0.1+int8", "topk:0.05+qsgd:16", "fp16", "int8:block=8"])
@given(delta=deltas())
def test_zstd_adds_no_error(spec: str, delta: dict) -> None:
    plain, packed = roundtrip(delta, spec, seed=3), roundtrip(delta, f"{spec}+zstd", seed=3)
    for k in delta:
        np.testing.assert_array_equal(plain[k], packed[k])


@pytest.mark.parametrize("spec", SPECS)
def test_encoding_is_deterministic_given_the_rng(spec: str) -> None:
    def wire(seed: int) -> bytes:
        entries = encode_delta(DELTA, spec, np.random.default_rng(seed))
        return msgpack.packb(entries, use_bin_type=True)

    assert wire(5) == wire(5)
    if parse_codec(spec).stochastic:
        assert wire(5) != wire(6)


@pytest.mark.parametrize("spec", ["int8", "qsgd", "topk:0.1", "topk:0.1+fp16"])
def test_non_finite_delta_is_the_callers_error_under_integer_and_topk_codecs(spec: str) -> None:
    bad = {**DELTA, "b": np.full(30, np.nan, dtype=np.float32)}
    with pytest.raises(ValueError):
        encode_delta(bad, spec)


# --- the wire entries ---------------------------------------------------------------------------

LAYOUTS = {
    "none": {"name", "dtype", "shape", "data"},
    "fp16": {"name", "dtype", "shape", "data"},
    "int8:block=64": {"name", "shape", "q", "scale"},
    "qsgd": {"name", "shape", "q", "scale"},
    "topk:0.1": {"name", "shape", "idx", "val"},
    "topk:0.1+fp16": {"name", "shape", "idx", "val"},
    "topk:0.1+int8": {"name", "shape", "idx", "q", "scale"},
}


@pytest.mark.parametrize("spec", list(LAYOUTS))
def test_entry_layout(spec: str) -> None:
    entries = encode_delta(DELTA, spec)
    assert [e["name"] for e in entries] == list(SHAPES)
    assert all(set(e) == LAYOUTS[spec] for e in entries)
    assert all(list(e["shape"]) == list(SHAPES[e["name"]]) for e in entries)


def test_int8_blocks_carry_one_float32_step_each() -> None:
    w = encode_delta(DELTA, "int8:block=64")[0]
    assert (w["q"]["dtype"], w["q"]["shape"]) == ("|i1", [600])
    assert (w["scale"]["dtype"], w["scale"]["shape"]) == ("<f4", [math.ceil(600 / 64)])
    per_tensor = encode_delta(DELTA, "int8")
    assert [e["scale"]["shape"] for e in per_tensor] == [[1], [1], [1], [0]]


def test_topk_entry_counts() -> None:
    entries = {e["name"]: e for e in encode_delta(DELTA, "topk:0.1+int8")}
    assert entries["w"]["q"]["shape"] == [60]  # ceil(0.1 * 600)
    assert entries["b"]["q"]["shape"] == [3]
    assert entries["s"]["q"]["shape"] == [1]  # at least one value of a non-empty tensor
    assert entries["e"]["q"]["shape"] == [0]


def test_zstd_wraps_the_whole_list_in_one_entry() -> None:
    [entry] = encode_delta(DELTA, "topk:0.1+int8+zstd")
    assert set(entry) == {"zstd", "size"}
    inner = zstd_backend().decompress(entry["zstd"])
    assert len(inner) == entry["size"]
    assert msgpack.unpackb(inner, raw=False) == encode_delta(DELTA, "topk:0.1+int8")


def test_indices_are_leb128_gaps_minus_one() -> None:
    idx = np.array([0, 1, 129, 130 + 128, 2**32 - 2], dtype=np.int64)
    data = encode_indices(idx)
    assert data["dtype"] == "|u1"
    # gaps-1: 0, 0, 127, 128 (0x80 0x01), 2**32-2-259-1 (five bytes)
    last = 2**32 - 2 - 258 - 1
    tail = [(last >> (7 * i)) & 0x7F | (0x80 if i < 4 else 0) for i in range(5)]
    assert list(data["data"]) == [0x00, 0x00, 0x7F, 0x80, 0x01, *tail]
    np.testing.assert_array_equal(decode_indices(data, 5, 2**32 - 1, "t"), idx)


@given(
    idx=st.lists(st.integers(0, 10**6), unique=True, max_size=50).map(sorted),
    extra=st.integers(1, 10**6),
)
def test_indices_round_trip(idx: list[int], extra: int) -> None:
    numel = (idx[-1] if idx else 0) + extra
    arr = np.array(idx, dtype=np.int64)
    np.testing.assert_array_equal(decode_indices(encode_indices(arr), len(idx), numel, "t"), arr)


@pytest.mark.parametrize("spec", ["topk:0.01+int8", "topk:0.01+int8+zstd"])
def test_topk_one_percent_with_int8_is_far_below_raw(spec: str) -> None:
    big = {"w": np.random.default_rng(1).normal(size=(200, 784)).astype(np.float32)}
    payload = msgpack.packb(encode_delta(big, spec), use_bin_type=True)
    raw = 4 * 200 * 784
    # 1568 kept values: 1 byte each, plus <= 2 bytes per index gap (mean gap 100) and headers
    assert len(payload) <= 1568 * 3 + 200
    assert raw / len(payload) >= 50


@given(delta=deltas(), spec=st.sampled_from([s for s in SPECS if "zstd" not in s]))
def test_zstd_bound_covers_every_valid_inner_list(delta: dict, spec: str) -> None:
    inner = msgpack.packb(encode_delta(delta, spec), use_bin_type=True)
    assert len(inner) <= max_inner_size(parse_codec(spec), shapes_of(delta))


@given(weights=deltas())
def test_fp16_downlink_is_what_agents_decode(weights: dict) -> None:
    sent = downlink_weights(weights, "fp16")
    assert all(a.dtype == np.float16 for a in sent.values())
    got = decode_weights(encode_weights(sent))
    for k, x in weights.items():
        inside = np.abs(x) <= F16_MAX
        bound = np.abs(x.astype(np.float64)) * 2.0**-11 + 2.0**-25
        assert (err(got[k], x)[inside] <= bound[inside]).all()
    assert downlink_weights(weights, "fp32") is weights
    with pytest.raises(ValueError):
        downlink_weights(weights, "bf16")


# --- corrupted or truncated payloads are rejected, never decoded into garbage ------------------


def rejects(entries: list[Any], spec: str, *reasons: RejectReason) -> WireError:
    with pytest.raises(WireError) as info:
        decode_delta(entries, spec, SHAPES)
    assert info.value.reason in reasons, info.value
    return info.value


def entry(spec: str, name: str = "w") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    entries = copy.deepcopy(encode_delta(DELTA, spec))
    return entries, next(e for e in entries if e["name"] == name)


def array(values: list[int] | np.ndarray, dtype: str) -> dict[str, Any]:
    a = np.asarray(values, dtype=dtype)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


BAD_CODEC, MALFORMED = RejectReason.BAD_CODEC, RejectReason.MALFORMED
NON_FINITE, TOO_LARGE = RejectReason.NON_FINITE, RejectReason.TOO_LARGE
CORRUPTIONS: dict[str, tuple[str, Any, RejectReason]] = {
    # spec, mutation of the "w" entry, expected reason
    "q-beyond-int8-levels": (
        "int8",
        lambda e: e.update(q=array([-128] + [0] * 599, "|i1")),
        BAD_CODEC,
    ),
    "q-missing": ("int8", lambda e: e.pop("q"), BAD_CODEC),
    "q-wrong-dtype": ("int8", lambda e: e.update(q=array(np.zeros(600), "<f4")), BAD_CODEC),
    "q-short": ("int8", lambda e: e.update(q=array(np.zeros(599), "|i1")), BAD_CODEC),
    "q-long": ("int8", lambda e: e.update(q=array(np.zeros(601), "|i1")), TOO_LARGE),
    "q-2d": ("int8", lambda e: e.update(q=array(np.zeros((20, 30)), "|i1")), BAD_CODEC),
    "q-truncated-bytes": (
        "int8",
        lambda e: e["q"].update(data=e["q"]["data"][:-1]),
        MALFORMED,
    ),
    "scale-zero": ("int8", lambda e: e.update(scale=array([0.0], "<f4")), BAD_CODEC),
    "scale-negative": ("int8", lambda e: e.update(scale=array([-1.0], "<f4")), BAD_CODEC),
    "scale-nan": (
        "int8",
        lambda e: e.update(scale=array([np.nan], "<f4")),
        NON_FINITE,
    ),
    "scale-overflows": (
        "int8",
        lambda e: e.update(scale=array([3e38], "<f4")),
        NON_FINITE,
    ),
    "scale-count": ("int8:block=64", lambda e: e.update(scale=array([1.0] * 9, "<f4")), BAD_CODEC),
    "scale-f8": ("int8", lambda e: e.update(scale=array([1.0], "<f8")), BAD_CODEC),
    "val-under-int8": ("int8", lambda e: e.update(val=e.pop("q")), BAD_CODEC),
    "val-wrong-dtype": ("topk:0.1", lambda e: e.update(val=array(np.ones(60), "<f2")), BAD_CODEC),
    "val-nan": (
        "topk:0.1",
        lambda e: e.update(val=array([np.nan] * 60, "<f4")),
        NON_FINITE,
    ),
    "idx-missing": ("topk:0.1", lambda e: e.pop("idx"), BAD_CODEC),
    "idx-too-few": ("topk:0.1", lambda e: e.update(idx=array([1] * 59, "|u1")), BAD_CODEC),
    "idx-too-many": ("topk:0.1", lambda e: e.update(idx=array([1] * 61, "|u1")), BAD_CODEC),
    "idx-truncated-varint": (
        "topk:0.1",
        lambda e: e.update(idx=array([1] * 59 + [0x81], "|u1")),
        BAD_CODEC,
    ),
    "idx-overlong-varint": (
        "topk:0.1",
        lambda e: e.update(idx=array([0x81, 0x00] + [0] * 59, "|u1")),
        BAD_CODEC,
    ),
    "idx-six-byte-varint": (
        "topk:0.1",
        lambda e: e.update(idx=array([0x80] * 5 + [1] + [0] * 59, "|u1")),
        BAD_CODEC,
    ),
    "idx-beyond-the-tensor": (
        "topk:0.1",
        lambda e: e.update(idx=array([0] * 59 + [0xD8, 0x04], "|u1")),  # last index 59 + 600
        BAD_CODEC,
    ),
    "idx-wrong-dtype": ("topk:0.1", lambda e: e.update(idx=array([0] * 60, "<u4")), BAD_CODEC),
    "idx-not-a-map": ("topk:0.1", lambda e: e.update(idx=b"\x00" * 60), MALFORMED),
    "shape-transposed": (
        "topk:0.1",
        lambda e: e.update(shape=[30, 20]),
        RejectReason.TENSOR_MISMATCH,
    ),
    "shape-not-a-list": ("int8", lambda e: e.update(shape="20,30"), MALFORMED),
    "dense-dtype-under-int8": (
        "int8",
        lambda e: [e.pop("q"), e.update(array(np.zeros((20, 30)), "<f4"))],
        BAD_CODEC,
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupted_entry_is_rejected_with_its_reason(case: str) -> None:
    spec, mutate, reason = CORRUPTIONS[case]
    entries, target = entry(spec)
    mutate(target)
    rejects(entries, spec, reason)


def test_scale_nan_cannot_hide_in_a_zero_block() -> None:
    entries, target = entry("int8:block=600")
    target.update(q=array([0] * 600, "|i1"), scale=array([np.inf], "<f4"))
    rejects(entries, "int8:block=600", RejectReason.NON_FINITE)


def test_qsgd_q_beyond_its_levels_is_rejected() -> None:
    entries, target = entry("qsgd:8,block=32")
    target.update(q=array([9] + [0] * 599, "|i1"))
    rejects(entries, "qsgd:8,block=32", BAD_CODEC)


def no_content_size(inner: bytes) -> bytes:
    zstd = zstd_backend()
    flag = {zstd.CompressionParameter.content_size_flag: 0}
    return bytes(zstd.ZstdCompressor(options=flag).compress(inner, zstd.ZstdCompressor.FLUSH_FRAME))


def wrapped(inner: bytes, **overrides: Any) -> list[dict[str, Any]]:
    blob = zstd_backend().compress(inner)
    return [{"zstd": blob, "size": len(inner), **overrides}]


ZSPEC = "topk:0.1+int8+zstd"
INNER = msgpack.packb(encode_delta(DELTA, "topk:0.1+int8"), use_bin_type=True)


def test_zstd_wrapper_round_trips_from_hand_made_frame() -> None:
    got = decode_delta(wrapped(INNER), ZSPEC, SHAPES)
    want = decode_delta(encode_delta(DELTA, ZSPEC), ZSPEC, SHAPES)
    for k in SHAPES:
        np.testing.assert_array_equal(got[k], want[k])


ZSTD_CORRUPTIONS: dict[str, tuple[Any, RejectReason]] = {
    "two-entries": (lambda: [*wrapped(INNER), *wrapped(INNER)], BAD_CODEC),
    "plain-entries": (lambda: encode_delta(DELTA, "topk:0.1+int8"), BAD_CODEC),
    "empty-list": (lambda: [], BAD_CODEC),
    "blob-not-bytes": (lambda: wrapped(INNER, zstd="text"), RejectReason.MALFORMED),
    "size-missing": (lambda: [{"zstd": wrapped(INNER)[0]["zstd"]}], RejectReason.MALFORMED),
    "size-bool": (lambda: wrapped(INNER, size=True), RejectReason.MALFORMED),
    "size-negative": (lambda: wrapped(INNER, size=-1), RejectReason.TOO_LARGE),
    "size-understated": (lambda: wrapped(INNER, size=len(INNER) - 1), RejectReason.MALFORMED),
    "size-overstated": (lambda: wrapped(INNER, size=len(INNER) + 1), RejectReason.MALFORMED),
    "truncated": (
        lambda: [{**wrapped(INNER)[0], "zstd": wrapped(INNER)[0]["zstd"][:-4]}],
        RejectReason.MALFORMED,
    ),
    "trailing-bytes": (
        lambda: [{**wrapped(INNER)[0], "zstd": wrapped(INNER)[0]["zstd"] + b"\0\0"}],
        RejectReason.MALFORMED,
    ),
    "not-zstd": (lambda: [{"zstd": b"hello", "size": 5}], RejectReason.MALFORMED),
    "no-content-size": (
        lambda: [
            {
                "zstd": no_content_size(INNER),
                "size": len(INNER),
            }
        ],
        RejectReason.MALFORMED,
    ),
    "inner-not-msgpack": (lambda: wrapped(b"\xc1" * 10), RejectReason.MALFORMED),
    "inner-a-map": (lambda: wrapped(msgpack.packb({"a": 1})), RejectReason.MALFORMED),
    "inner-list-of-ints": (lambda: wrapped(msgpack.packb([1, 2])), RejectReason.MALFORMED),
    "inner-wrong-names": (
        lambda: wrapped(msgpack.packb(encode_delta({"x": DELTA["w"]}, "topk:0.1+int8"))),
        RejectReason.TENSOR_MISMATCH,
    ),
    "inner-other-codec": (
        lambda: wrapped(msgpack.packb(encode_delta(DELTA, "topk:0.1"), use_bin_type=True)),
        BAD_CODEC,
    ),
}


@pytest.mark.parametrize("case", list(ZSTD_CORRUPTIONS))
def test_corrupted_zstd_wrapper_is_rejected(case: str) -> None:
    make, reason = ZSTD_CORRUPTIONS[case]
    rejects(make(), ZSPEC, reason)


def test_decompression_bomb_is_refused_before_inflating() -> None:
    bomb = zstd_backend().compress(bytes(64 << 20))
    assert len(bomb) < 64 << 10  # a 64 MiB frame that travels in a few kB
    bound = max_inner_size(parse_codec(ZSPEC), SHAPES)
    rejects([{"zstd": bomb, "size": 64 << 20}], ZSPEC, RejectReason.TOO_LARGE)
    # lying about the size does not help: the frame header must agree with it
    rejects([{"zstd": bomb, "size": bound}], ZSPEC, RejectReason.MALFORMED)


entry_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-300, 300),
    st.floats(),
    st.text(max_size=6),
    st.binary(max_size=40),
    st.lists(st.integers(-2, 40), max_size=3),
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["|u1", "|i1", "<f4", "<f2", "<u4", "<f8"]),
            "shape": st.lists(st.integers(0, 70), max_size=2),
            "data": st.binary(max_size=300),
        }
    ),
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_to_sane_or_rejects(entries: list[Any], spec: str) -> None:
    try:
        got = decode_delta(entries, spec, SHAPES)
    except WireError as exc:
        assert isinstance(exc.reason, RejectReason)
        return
    assert {n: a.shape for n, a in got.items()} == SHAPES
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in got.values())


@FUZZ
@given(
    spec=st.sampled_from(SPECS),
    index=st.integers(0, 3),
    key=st.sampled_from(["name", "shape", "dtype", "data", "q", "scale", "idx", "val", "x"]),
    value=entry_values,
)
def test_fuzz_entry_fields_decode_or_reject(spec: str, index: int, key: str, value: Any) -> None:
    entries = copy.deepcopy(encode_delta(DELTA, spec))
    if parse_codec(spec).zstd_level is not None:  # mutate the inner list, then wrap it again
        inner = msgpack.unpackb(zstd_backend().decompress(entries[0]["zstd"]))
        inner[index] = {**inner[index], key: value}
        entries = wrapped(msgpack.packb(inner, use_bin_type=True))
    else:
        entries[index] = {**entries[index], key: value}
    decodes_to_sane_or_rejects(entries, spec)


@FUZZ
@given(spec=st.sampled_from(SPECS), data=st.data())
def test_fuzz_payload_bytes_decode_or_reject(spec: str, data: st.DataObject) -> None:
    payload = bytearray(msgpack.packb(encode_delta(DELTA, spec), use_bin_type=True))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        op = data.draw(st.sampled_from(["flip", "set", "truncate"]))
        if op == "flip":
            payload[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            payload[i] = data.draw(st.integers(0, 255))
        else:
            del payload[i:]
            break
    try:
        entries = msgpack.unpackb(bytes(payload), raw=False, strict_map_key=True)
    except Exception:  # the envelope decoder's job: it rejects these as MALFORMED
        return
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return  # likewise refused by protocol.wire.decode_update
    decodes_to_sane_or_rejects(entries, spec)


def test_decode_does_not_modify_entries() -> None:
    for spec in SPECS:
        entries = encode_delta(DELTA, spec)
        before = copy.deepcopy(entries)
        decode_delta(entries, spec, SHAPES)
        assert entries == before
