"""Delta-coded models (docs/PROTOCOL.md §15): the arithmetic, the message, a golden vector.

A chain of deltas, each encoded to bytes and decoded as an agent would, must rebuild the
coordinator's broadcast model bit for bit; the server-side error feedback must keep it
within one codec step of the global model however long the chain; every malformed delta
is refused with its reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol import (
    ModelDelta,
    RejectReason,
    TopicKind,
    TopicRef,
    Topics,
    TrainPlan,
    Weights,
    WireError,
    decode_model_delta,
    encode_model_delta,
    parse_topic,
    weights_digest,
)
from protocol.broadcast import (
    apply_delta,
    as_announcement,
    check_digest,
    delta_rng,
    encode_step,
    narrow,
)
from protocol.codecs.quantise import F16_MAX

CODECS = ["none", "fp16", "int8", "int8+zstd", "qsgd:2+zstd:9", "topk:0.1+int8", "topk:0.3"]
SHAPES = {"conv.w": (4, 3, 3), "conv.b": (4,), "fc.w": (36, 10), "fc.b": (10,)}


def start(seed: int = 0) -> Weights:
    rng = np.random.default_rng([seed, 17])
    return {n: rng.normal(0.0, 0.1, size=s).astype(np.float32) for n, s in SHAPES.items()}


def walk(g: Weights, rng: np.random.Generator, scale: float = 0.01) -> Weights:
    """The global model one round later: a random step, as FedAvg's mean delta would be."""
    return {n: (a + rng.normal(0.0, scale, size=a.shape)).astype(np.float32) for n, a in g.items()}


def message(base: Weights | None, entries: list, target_id: str, codec: str | None, *,
            dtype: str = "<f4", round_no: int = 2) -> ModelDelta:
    return ModelDelta(
        job="demo", run="r1", round=round_no, model_id=target_id, task="mnist-cnn",
        plan=TrainPlan(), codec="none", deadline_s=30.0,
        base_id=weights_digest(base) if base is not None else None,
        delta_codec=codec, dtype=dtype, tensors=tuple(entries),
    )


def same_bits(a: Weights, b: Weights) -> bool:
    return list(a) == list(b) and all(
        a[n].dtype == b[n].dtype == np.float32 and np.array_equal(a[n].view(np.uint32),
                                                                   b[n].view(np.uint32))
        for n in a
    )


@pytest.mark.parametrize("dtype", ["<f4", "<f2"])
@pytest.mark.parametrize("codec", CODECS)
def test_a_chain_of_deltas_over_the_wire_rebuilds_the_broadcast_model_bit_for_bit(
    codec: str, dtype: str
) -> None:
    rng = np.random.default_rng(1)
    g = start()
    coordinator = narrow(g, dtype)
    agent = {n: a.copy() for n, a in coordinator.items()}  # what a device received whole
    for version in range(1, 16):
        g = walk(g, rng)
        base_id = weights_digest(coordinator)
        entries, coordinator = encode_step(coordinator, g, codec, dtype, delta_rng(0, version))
        target = weights_digest(coordinator)
        sent = decode_model_delta(encode_model_delta(
            message(agent, entries, target, codec, dtype=dtype, round_no=version + 1)
        ))
        assert sent.base_id == base_id == weights_digest(agent)
        agent = apply_delta(agent, sent.tensors, codec, dtype)
        assert same_bits(agent, coordinator) and weights_digest(agent) == sent.model_id
        if dtype == "<f2":  # every weight a float16 value: the whole model travels as <f2
            assert all(np.array_equal(a.astype(np.float16).astype(np.float32), a)
                       for a in agent.values())


@pytest.mark.parametrize("codec", ["int8+zstd", "qsgd:2+zstd:9", "topk:0.1+int8"])
def test_the_broadcast_model_never_drifts_from_the_global_model(codec: str) -> None:
    # 200 versions of a random walk. Sending each round's change alone (no feedback), the
    # codec's errors add up like a random walk of their own; sending G - B, B stays within
    # a few codec steps of G however long the chain.
    rng = np.random.default_rng(2)
    g = start()
    b = narrow(g, "<f4")
    open_loop = dict(b)
    worst_gap, worst_step = 0.0, 0.0
    for version in range(1, 201):
        previous = g
        g = walk(g, rng)
        _, b = encode_step(b, g, codec, "<f4", delta_rng(0, version))
        _, moved = encode_step(narrow(previous, "<f4"), g, codec, "<f4", delta_rng(0, version))
        open_loop = {n: open_loop[n] + (moved[n] - previous[n]) for n in g}
        worst_step = max(worst_step, *(float(np.abs(g[n] - previous[n]).max()) for n in g))
        worst_gap = max(worst_gap, *(float(np.abs(g[n] - b[n]).max()) for n in g))
    assert worst_gap < 4 * worst_step  # bounded by the codec's step, not the chain's length
    drift = max(float(np.abs(g[n] - open_loop[n]).max()) for n in g)
    assert drift > 2 * worst_gap  # what the feedback prevents
    # and a target that stops moving is reached: every codec sends what it still owes
    for version in range(201, 261):
        _, b = encode_step(b, g, codec, "<f4", delta_rng(0, version))
    assert max(float(np.abs(g[n] - b[n]).max()) for n in g) < 1e-3


def test_a_lossless_delta_reaches_the_target_within_float32_rounding() -> None:
    g0, g1 = start(0), start(1)
    entries, b1 = encode_step(narrow(g0, "<f4"), g1, "none", "<f4")
    for n in g1:
        np.testing.assert_allclose(b1[n], g1[n], rtol=0, atol=1e-7)
    assert same_bits(apply_delta(g0, entries, "none", "<f4"), b1)


def test_the_coordinators_stochastic_rounding_is_keyed_by_seed_and_version() -> None:
    b, g = narrow(start(0), "<f4"), start(1)
    first, _ = encode_step(b, g, "qsgd:2", "<f4", delta_rng(0, 3))
    again, _ = encode_step(b, g, "qsgd:2", "<f4", delta_rng(0, 3))
    other, _ = encode_step(b, g, "qsgd:2", "<f4", delta_rng(0, 4))
    assert first == again and first != other
    key = int.from_bytes(hashlib.sha256(b"coordinator").digest()[:8], "big")
    assert delta_rng(5, 3).random() == np.random.default_rng([5, 3, key]).random()


def test_float16_broadcast_saturates_and_every_version_is_a_float16_model() -> None:
    g = {"x": np.array([1e6, -1e6, 1 / 3, 0.0], dtype=np.float32)}
    b = narrow(g, "<f2")
    assert b["x"].dtype == np.float32 and b["x"][0] == F16_MAX and b["x"][1] == -F16_MAX
    _, b2 = encode_step(b, {"x": np.array([7e4, 0.0, 0.5, 1e-9], dtype=np.float32)},
                        "none", "<f2")
    assert b2["x"][0] == F16_MAX and b2["x"][2] == np.float32(0.5)


def test_applying_to_the_wrong_base_or_shapes_is_refused_with_its_reason() -> None:
    b, g = narrow(start(0), "<f4"), start(1)
    entries, _ = encode_step(b, g, "int8", "<f4")
    wrong = {n: a.reshape(-1) for n, a in b.items()}
    with pytest.raises(WireError) as shape:
        apply_delta(wrong, entries, "int8", "<f4")
    assert shape.value.reason is RejectReason.TENSOR_MISMATCH
    with pytest.raises(WireError) as codec:
        apply_delta(b, entries, "fp16", "<f4")
    assert codec.value.reason is RejectReason.BAD_CODEC
    with pytest.raises(WireError) as dtype:
        apply_delta(b, entries, "int8", "<f8")
    assert dtype.value.reason is RejectReason.MALFORMED
    huge = {n: np.full_like(a, 3e38) for n, a in b.items()}
    plus, _ = encode_step({n: np.zeros_like(a) for n, a in b.items()}, huge, "none", "<f4")
    with pytest.raises(WireError) as overflow:
        apply_delta(huge, plus, "none", "<f4")
    assert overflow.value.reason is RejectReason.NON_FINITE


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"base_id": None}, "a notice (no base_id) has no tensors"),
        ({"delta_codec": None}, "a base_id needs a delta_codec"),
        ({"tensors": ()}, "a base_id needs a delta_codec and tensors"),
        ({"dtype": "<f8"}, "dtype"),
    ],
)
def test_inconsistent_deltas_are_malformed(change: dict, reason: str) -> None:
    b = narrow(start(0), "<f4")
    entries, _ = encode_step(b, start(1), "int8", "<f4")
    bad = replace(message(b, entries, "x" * 32, "int8"), **change)
    with pytest.raises(WireError) as exc:
        decode_model_delta(encode_model_delta(bad))
    assert exc.value.reason is RejectReason.MALFORMED and reason in exc.value.detail


def test_a_notice_round_trips_and_stands_for_the_whole_models_announcement() -> None:
    notice = message(None, [], "ab" * 16, None)
    assert decode_model_delta(encode_model_delta(notice)) == notice
    model = as_announcement(notice, start(0))
    assert (model.round, model.model_id, model.delta_codec) == (2, "ab" * 16, None)


def test_delta_topics_parse_like_model_topics() -> None:
    t = Topics("demo")
    assert t.delta == "fedmq/v1/demo/delta"
    assert t.delta_chunk(3) == "fedmq/v1/demo/delta/chunk/3"
    assert t.delta_family == ("fedmq/v1/demo/delta", "fedmq/v1/demo/delta/chunk/+")
    assert t.model_family == ("fedmq/v1/demo/model", "fedmq/v1/demo/model/chunk/+")
    assert parse_topic(t.delta) == TopicRef("demo", TopicKind.DELTA)
    assert parse_topic(t.delta_chunk(3)) == TopicRef("demo", TopicKind.DELTA, chunk=3)
    with pytest.raises(WireError):
        parse_topic("fedmq/v1/demo/delta/x")


# --- the golden delta (docs/PROTOCOL.md §15) ----------------------------------------------

#: the golden model of test_golden.py (w = [[1, 2], [3, 4]], b = [0.5, -0.5]) ...
BASE = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype="<f4"),
        "b": np.array([0.5, -0.5], dtype="<f4")}
#: ... moved towards this global model with the int8 codec
TARGET = {"w": np.array([[1.25, 2.0], [3.0, 3.75]], dtype="<f4"),
          "b": np.array([0.625, -0.5], dtype="<f4")}
GOLDEN_DELTA_HEX = (
    "de0013a17601a474797065a564656c7461a36a6f62a464656d6fa372756ea27231a5726f756e6402a761"
    "7474656d707400a86d6f64656c5f6964d920636339643263636434633435343365666333323532306534"
    "3265663737346630a47461736ba96d6e6973742d636e6ea4706c616e85a665706f63687301aa62617463"
    "685f73697a6520a26c72cb3fa999999999999aa47365656400a76f7074696f6e7380a5636f646563a46e"
    "6f6e65aa646561646c696e655f73cb403e000000000000a6636f686f7274c0a4646f6e65c2a969737375"
    "65645f6174cb0000000000000000ab6d61785f7061796c6f616400a7626173655f6964d9206537653530"
    "623163393663653064396634313430633630386631633135666337ab64656c74615f636f646563a4696e"
    "7438a56474797065a33c6634a774656e736f72739284a46e616d65a177a57368617065920202a17183a5"
    "6474797065a37c6931a573686170659104a464617461c4047f000081a57363616c6583a56474797065a3"
    "3c6634a573686170659101a464617461c4040402013b84a46e616d65a162a573686170659102a17183a5"
    "6474797065a37c6931a573686170659102a464617461c4027f00a57363616c6583a56474797065a33c66"
    "34a573686170659101a464617461c4040402813a"
)
#: the version it builds: the target exactly (0.25 = 127 x float32(0.25 / 127) here)
GOLDEN_VERSION_ID = "cc9d2ccd4c4543efc32520e42ef774f0"


def test_golden_delta_bytes_and_the_version_they_build() -> None:
    entries, built = encode_step(BASE, TARGET, "int8", "<f4")
    # int8, one step per tensor: w's peak 0.25 / 127 levels; b's 0.125 / 127
    assert [e["q"]["data"] for e in entries] == [bytes([127, 0, 0, 129]), bytes([127, 0])]
    golden = message(BASE, entries, weights_digest(built), "int8")
    payload = encode_model_delta(golden)
    assert payload.hex() == GOLDEN_DELTA_HEX and len(payload) == 482
    assert decode_model_delta(bytes.fromhex(GOLDEN_DELTA_HEX)) == golden
    assert golden.model_id == GOLDEN_VERSION_ID
    assert golden.base_id == "e7e50b1c96ce0d9f4140c608f1c15fc7"  # the golden model's id
    assert same_bits(apply_delta(BASE, entries, "int8", "<f4"), built)
    np.testing.assert_array_equal(built["w"], TARGET["w"])
    np.testing.assert_array_equal(built["b"], TARGET["b"])


# --- the shared vectors (protocol/vectors/deltas.json) ---------------------------------------

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "deltas.json").read_text()
)


def f32s(doc: list[dict[str, Any]]) -> Weights:
    return {t["name"]: np.frombuffer(bytes.fromhex(t["f32"]), "<f4").reshape(t["shape"])
            for t in doc}


@pytest.mark.parametrize("chain", VECTORS["chains"],
                         ids=lambda c: f"{c['delta_codec']}-{c['dtype']}")
def test_delta_vector_chains_rebuild_every_version(chain: dict[str, Any]) -> None:
    version = f32s(chain["start"])
    assert weights_digest(version) == chain["start_model_id"]
    for step in chain["steps"]:
        payload = bytes.fromhex(step["hex"])
        d = decode_model_delta(payload)
        assert encode_model_delta(d) == payload and d.base_id == weights_digest(version)
        version = apply_delta(version, d.tensors, chain["delta_codec"], chain["dtype"])
        assert same_bits(version, f32s(step["version"]))
        assert weights_digest(version) == d.model_id == step["model_id"]


@pytest.mark.parametrize("case", VECTORS["rejects"], ids=lambda c: c["name"])
def test_delta_vector_rejects_with_reason(case: dict[str, Any]) -> None:
    with pytest.raises(WireError) as exc:
        d = decode_model_delta(bytes.fromhex(case["hex"]))
        assert case["at"] == "apply"
        assert d.delta_codec is not None
        built = apply_delta(f32s(VECTORS["base"]), d.tensors, d.delta_codec, d.dtype)
        check_digest(built, d.model_id, "delta")
    assert exc.value.reason.value == case["reason"]


def test_delta_vector_notice_is_a_notice() -> None:
    notice = decode_model_delta(bytes.fromhex(VECTORS["notice"]["hex"]))
    assert notice.base_id is None and notice.tensors == () and notice.delta_codec is None
