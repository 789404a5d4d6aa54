"""Round-trip properties: decode(encode(m)) == m for generated messages of every kind."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol import (
    ClosedBy,
    ModelAnnouncement,
    Phase,
    Presence,
    RoundMetrics,
    Status,
    TopicKind,
    TopicRef,
    Topics,
    TrainPlan,
    Update,
    check_id,
    decode_delta,
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
    parse_topic,
    raw_size,
    weights_digest,
)

ID_RE = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
F16_MAX = float(np.finfo(np.float16).max)
F32_MAX = float(np.finfo(np.float32).max)
#: the codecs these properties cover; the codec work tests its own
BASE_CODECS = ("none", "fp16")

ids = st.from_regex(rf"\A{ID_RE}\Z")
counts = st.integers(0, 2**53)
stamps = st.floats(0.0, 4e9, allow_nan=False)
finite = st.floats(allow_nan=False, allow_infinity=False)
short_text = st.text(max_size=64)
names = st.text(min_size=1, max_size=40)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


def _elements(dtype: str) -> st.SearchStrategy[float]:
    """Finite values that survive the decoder's cast to float32."""
    bound = F16_MAX if dtype.endswith("f2") else F32_MAX
    width = {"2": 16, "4": 32, "8": 64}[dtype[-1]]
    return st.floats(-bound, bound, width=width, allow_nan=False, allow_infinity=False)


@st.composite
def tensors(draw, dtypes=("<f2", "<f4", "<f8", ">f4", ">f8")):
    """An ordered dict of uniquely named finite float tensors of random shapes."""
    keys = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    out = {}
    for key in keys:
        dtype = draw(st.sampled_from(dtypes))
        out[key] = draw(hnp.arrays(dtype, shapes, elements=_elements(dtype)))
    return out


scalars = st.one_of(st.integers(-(2**63), 2**64 - 1), finite, st.text(max_size=20), st.booleans())
plans = st.builds(
    TrainPlan,
    epochs=st.integers(0, 10_000),
    batch_size=st.integers(1, 1 << 20),
    lr=st.floats(0.0, 1e6),
    seed=st.integers(0, 2**32 - 1),
    options=st.dictionaries(st.text(max_size=20), scalars, max_size=8),
)
models = st.builds(
    ModelAnnouncement,
    job=ids,
    run=ids,
    round=st.integers(1, 2**53),
    attempt=st.integers(0, 1_000_000),
    model_id=st.text(max_size=64),
    task=st.text(max_size=256),
    plan=plans,
    codec=st.sampled_from(BASE_CODECS) | st.text(max_size=256),
    deadline_s=st.floats(0.0, 1e7),
    cohort=st.none() | st.lists(ids, max_size=5).map(tuple),
    done=st.booleans(),
    issued_at=stamps,
    weights=tensors(),
)
presences = st.builds(
    Presence,
    agent=ids,
    online=st.booleans(),
    samples=st.none() | st.integers(0, 2**40),
    device=st.none() | short_text,
    trainer=st.none() | short_text,
    at=stamps,
    kind=st.none() | st.sampled_from(["python", "browser"]) | short_text,
)
rejected = st.dictionaries(st.text(max_size=20), counts, max_size=8)
statuses = st.builds(
    Status,
    job=ids,
    run=ids,
    phase=st.sampled_from(Phase),
    round=counts,
    rounds=counts,
    attempt=counts,
    accepted=counts,
    quorum=counts,
    min_replies=counts,
    cohort_size=counts,
    agents_online=counts,
    deadline_at=st.none() | stamps,
    rejected=rejected,
    at=stamps,
    message=st.text(max_size=1024),
)
optional_float = st.none() | finite
round_metrics = st.builds(
    RoundMetrics,
    job=ids,
    run=ids,
    round=st.integers(1, 2**53),
    closed_by=st.sampled_from(ClosedBy),
    accepted=counts,
    declined=counts,
    rejected=rejected,
    samples=counts,
    duration_s=st.floats(0.0, 1e9),
    bytes_up=counts,
    bytes_down=counts,
    raw_bytes_up=counts,
    accuracy=optional_float,
    loss=optional_float,
    train_loss=optional_float,
    train_accuracy=optional_float,
    at=stamps,
)


@st.composite
def updates(draw):
    codec = draw(st.sampled_from(BASE_CODECS))
    common = {
        "job": draw(ids),
        "agent": draw(ids),
        "round": draw(st.integers(1, 2**53)),
        "model_id": draw(st.text(max_size=64)),
        "codec": codec,
        "metrics": draw(st.dictionaries(st.text(max_size=20), finite, max_size=8)),
        "train_s": draw(st.floats(0.0, 1e9)),
    }
    if draw(st.booleans()):
        return Update(samples=0, tensors=(), declined=draw(st.text(max_size=256)), **common)
    delta = draw(tensors(dtypes=("<f2",) if codec == "fp16" else ("<f4",)))
    samples = draw(st.integers(1, 2**40))
    return Update(samples=samples, tensors=tuple(encode_delta(delta, codec)), **common)


# --- messages ------------------------------------------------------------------------


@given(m=models)
def test_model_round_trip(same, m):
    got = decode_model(encode_model(m))
    same(got, m)
    # The digest names the weights, whatever dtype or byte order carried them.
    assert weights_digest(got.weights) == weights_digest(m.weights)


@given(m=models)
def test_model_bytes_round_trip(m):
    # Weights decode as float32, so start from float32 for a byte-exact comparison.
    m = replace(m, weights={k: v.astype("<f4") for k, v in m.weights.items()})
    payload = encode_model(m)
    assert encode_model(decode_model(payload)) == payload


@given(u=updates())
def test_update_round_trip(u):
    payload = encode_update(u)
    assert decode_update(payload) == u
    assert encode_update(decode_update(payload)) == payload


@given(p=presences)
def test_presence_round_trip(p):
    payload = encode_presence(p)
    assert decode_presence(payload) == p
    assert encode_presence(decode_presence(payload)) == payload


@given(s=statuses)
def test_status_round_trip(s):
    payload = encode_status(s)
    assert decode_status(payload) == s
    assert encode_status(decode_status(payload)) == payload


@given(m=round_metrics)
def test_metrics_round_trip(m):
    payload = encode_metrics(m)
    assert decode_metrics(payload) == m
    assert encode_metrics(decode_metrics(payload)) == payload


def test_unknown_fields_are_ignored(kinds, samples, same):
    for name, kind in kinds.items():
        payload = kind.encode(samples[name])
        if kind.msgpack:
            doc = msgpack.unpackb(payload)
            doc["x_future"] = {"nested": [1, 2.5, b"\x00"]}
            extended = msgpack.packb(doc, use_bin_type=True)
        else:
            doc = json.loads(payload)
            doc["x_future"] = {"nested": [1, 2.5, None]}
            extended = json.dumps(doc).encode()
        same(kind.decode(extended), samples[name])


# --- the model digest ------------------------------------------------------------------


@given(w=tensors(dtypes=("<f4",)))
def test_weights_digest_is_stable_across_layout(w):
    digest = weights_digest(w)
    assert re.fullmatch(r"[0-9a-f]{32}", digest)
    assert weights_digest({k: v.astype(">f4") for k, v in w.items()}) == digest
    fortran = {k: np.asfortranarray(v).reshape(v.shape) for k, v in w.items()}
    assert weights_digest(fortran) == digest
    assert weights_digest({k: v.astype("<f8") for k, v in w.items()}) == digest
    assert weights_digest(dict(w)) == digest


@given(w=tensors(dtypes=("<f4",)), data=st.data())
def test_weights_digest_changes_with_content(w, data):
    digest = weights_digest(w)
    key = data.draw(st.sampled_from(list(w)))
    renamed = {(k + "'" if k == key else k): v for k, v in w.items()}
    assert weights_digest(renamed) != digest
    if w[key].size:
        bumped = dict(w)
        flat = w[key].astype(np.float32).ravel()
        i = data.draw(st.integers(0, flat.size - 1))
        toward = np.float32(-np.inf if flat[i] > 0 else np.inf)  # never overflows
        flat[i] = np.nextafter(flat[i], toward, dtype=np.float32)
        bumped[key] = flat.reshape(w[key].shape)
        assert weights_digest(bumped) != digest
    reshaped = dict(w)
    reshaped[key] = w[key].reshape(*w[key].shape, 1)
    assert weights_digest(reshaped) != digest
    if len(w) > 1:
        assert weights_digest(dict(reversed(list(w.items())))) != digest


# --- topics and ids ------------------------------------------------------------------


@given(job=ids, agent=ids)
def test_topic_round_trip(job, agent):
    t = Topics(job)
    assert parse_topic(t.update(agent)) == TopicRef(job, TopicKind.UPDATE, agent)
    assert parse_topic(t.presence(agent)) == TopicRef(job, TopicKind.AGENTS, agent)
    assert parse_topic(t.model) == TopicRef(job, TopicKind.MODEL)
    assert parse_topic(t.status) == TopicRef(job, TopicKind.STATUS)
    assert parse_topic(t.metrics) == TopicRef(job, TopicKind.METRICS)


@given(value=st.text(max_size=70) | ids)
def test_check_id_accepts_exactly_the_regex(value):
    valid = re.fullmatch(ID_RE, value) is not None
    if valid:
        assert check_id(value) == value
        assert not set(value) & set("/+#$ \n\x00")
    else:
        with pytest.raises(ValueError):
            check_id(value)


# --- codecs --------------------------------------------------------------------------


@given(delta=tensors(dtypes=("<f4",)))
def test_codec_none_is_exact(delta):
    shapes = {k: v.shape for k, v in delta.items()}
    entries = encode_delta(delta, "none")
    assert [e["dtype"] for e in entries] == ["<f4"] * len(delta)
    got = decode_delta(entries, "none", shapes)
    assert list(got) == list(delta)
    for k, v in delta.items():
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v)
    assert raw_size(shapes) == sum(4 * v.size for v in delta.values())


f16_range = st.floats(-F16_MAX, F16_MAX, width=32, allow_nan=False)


@given(
    delta=st.dictionaries(
        names, hnp.arrays("<f4", shapes, elements=f16_range), min_size=1, max_size=4
    )
)
def test_codec_fp16_within_half_precision(delta):
    shapes = {k: v.shape for k, v in delta.items()}
    entries = encode_delta(delta, "fp16")
    assert [e["dtype"] for e in entries] == ["<f2"] * len(delta)
    assert sum(len(e["data"]) for e in entries) == raw_size(shapes) // 2
    got = decode_delta(entries, "fp16", shapes)
    assert list(got) == list(delta)
    for k, v in delta.items():
        assert got[k].dtype == np.float32
        # Round to nearest: relative error <= 2**-11 for normals; absolute error
        # <= half the smallest subnormal step (2**-25) below float16's normal range.
        err = np.abs(got[k].astype(np.float64) - v.astype(np.float64))
        bound = np.abs(v.astype(np.float64)) * 2.0**-11 + 2.0**-25
        assert (err <= bound).all()
        np.testing.assert_array_equal(got[k], v.astype(np.float16).astype(np.float32))
