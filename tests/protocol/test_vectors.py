"""The shared golden vectors (protocol/vectors/) against the Python reference, both ways.

One table per file, read in both directions as h11's test_io does: encode(message) ==
bytes and decode(bytes) == message; every must-reject input is refused with its reason.
web/test/protocol/ checks the JavaScript implementation against the same files.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from protocol import (
    ClosedBy,
    ModelAnnouncement,
    Phase,
    Presence,
    RejectReason,
    RoundMetrics,
    Status,
    Topics,
    TrainPlan,
    Update,
    WireError,
    decode_delta,
    encode_delta,
    parse_topic,
)
from protocol.chunks import Reassembler, decode_frame, encode_manifest, split
from protocol.codecs.entropy import zstd_backend
from protocol.keys import SigningKey, VerifyKey
from protocol.reports import (
    decode_metrics,
    decode_presence,
    decode_status,
    encode_metrics,
    encode_presence,
    encode_status,
)
from protocol.signing import Purpose, decode_signed, open_model, open_update, seal, signed_bytes
from protocol.wire import decode_model, decode_update, encode_model, encode_update

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocol" / "vectors"
MAX = 64 * 1024 * 1024


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def weights(doc: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Named tensors of a vector, in their wire dtype (float32 values, hex)."""
    return {
        t["name"]: np.frombuffer(bytes.fromhex(t["f32"]), "<f4")
        .reshape(t["shape"])
        .astype(t.get("dtype", "<f4"))
        for t in doc
    }


def message(kind: str, doc: dict[str, Any]) -> Any:
    d = dict(doc)
    if kind == "model":
        d["plan"] = TrainPlan(**d["plan"])
        d["weights"] = weights(d["weights"])
        d["cohort"] = tuple(d["cohort"]) if d["cohort"] is not None else None
        return ModelAnnouncement(**d)
    if kind == "update":
        d["tensors"] = tuple(msgpack.unpackb(bytes.fromhex(d.pop("tensors_msgpack")), raw=False))
        return Update(**d)
    if kind == "presence":
        return Presence(**d)
    if kind == "status":
        return Status(**{**d, "phase": Phase(d["phase"])})
    return RoundMetrics(**{**d, "closed_by": ClosedBy(d["closed_by"])})


ENCODE = {
    "model": encode_model,
    "update": encode_update,
    "presence": encode_presence,
    "status": encode_status,
    "metrics": encode_metrics,
}
DECODE = {
    "model": decode_model,
    "update": decode_update,
    "presence": decode_presence,
    "status": decode_status,
    "metrics": decode_metrics,
}
MESSAGES = load("messages.json")["messages"]


def same(got: Any, want: Any) -> None:
    for field in want.__dataclass_fields__:
        g, w = getattr(got, field), getattr(want, field)
        if field == "weights":
            assert list(g) == list(w)
            for name in w:
                np.testing.assert_array_equal(g[name], np.asarray(w[name], dtype=np.float32))
        else:
            assert g == w, field


@pytest.mark.parametrize("vector", MESSAGES, ids=[v["name"] for v in MESSAGES])
def test_message_vectors_both_ways(vector):
    want = message(vector["kind"], vector["message"])
    assert ENCODE[vector["kind"]](want).hex() == vector["hex"]
    same(DECODE[vector["kind"]](bytes.fromhex(vector["hex"])), want)


def test_topic_vectors():
    t = load("messages.json")["topics"]
    topics = Topics(t["job"])
    assert [
        topics.model,
        topics.model_chunk(3),
        topics.all_model_chunks,
        topics.update("pi-01"),
        topics.presence("pi-01"),
        topics.status,
        topics.metrics,
    ] == [
        t["model"],
        t["model_chunk_3"],
        t["model_chunks"],
        t["update"],
        t["presence"],
        t["status"],
        t["metrics"],
    ]
    assert [s for s, _ in topics.agent_subscriptions] == t["agent_subscriptions"]
    assert parse_topic(t["model_chunk_3"]).chunk == 3


CODECS = load("codecs.json")
#: the frames in codecs.json are this libzstd's; another version compresses differently
SAME_LIBZSTD = CODECS["zstd_library"] == list(zstd_backend().zstd_version_info)


@pytest.mark.parametrize("vector", CODECS["cases"], ids=[c["codec"] for c in CODECS["cases"]])
def test_codec_vectors_both_ways(vector):
    delta = weights(vector["delta"])
    entries = encode_delta(delta, vector["codec"], np.random.default_rng(vector.get("seed", 7)))
    packed = msgpack.packb(entries, use_bin_type=True)
    if "zstd" in vector["codec"]:
        inner = zstd_backend().decompress(entries[0]["zstd"])
        assert inner.hex() == vector["inner_msgpack"]
        if not SAME_LIBZSTD:
            packed = bytes.fromhex(vector["entries_msgpack"])  # another libzstd: frames differ
    assert packed.hex() == vector["entries_msgpack"]
    wire = msgpack.unpackb(bytes.fromhex(vector["entries_msgpack"]), raw=False)
    decoded = decode_delta(wire, vector["codec"], {n: a.shape for n, a in delta.items()})
    for name, want in weights(vector["decoded"]).items():
        assert decoded[name].tobytes() == want.tobytes()


def test_error_feedback_vector():
    from edge_agent.feedback import ErrorFeedback

    fb = ErrorFeedback()
    for step in CODECS["feedback"]["rounds"]:
        entries = fb.encode(weights(step["delta"]), CODECS["feedback"]["codec"], scope="r1")
        assert msgpack.packb(entries, use_bin_type=True).hex() == step["entries_msgpack"]
        assert fb.state is not None
        for name, want in weights(step["residual"]).items():
            assert fb.state.tensors[name].tobytes() == want.tobytes()


def test_chunk_vectors_both_ways():
    c = load("chunks.json")
    payload = bytes.fromhex(c["payload"])
    parts = split(payload, c["max_payload"])
    assert parts is not None
    assert encode_manifest(parts[0]).hex() == c["manifest"]
    assert [f.hex() for f in parts[1]] == c["frames"]
    frames = [bytes.fromhex(f) for f in c["frames"]]
    random.Random(0).shuffle(frames)
    r = Reassembler(1 << 20, ttl_s=60.0, max_payload_size=MAX)
    got = [r.add("pi-01", f, 0.0) for f in [*frames, frames[0]]]
    assert [g for g in got if g is not None] == [payload]


def test_signed_vectors_both_ways():
    s = load("signed.json")
    key = SigningKey.from_seed(bytes.fromhex(s["seed"]))
    assert key.public.raw.hex() == s["public"]
    assert SigningKey.from_pem(s["private_pem"].encode()).public == key.public
    assert VerifyKey.from_pem(s["public_pem"].encode()) == key.public
    for e in s["envelopes"]:
        body, purpose = bytes.fromhex(e["body"]), Purpose(e["purpose"])
        assert (
            signed_bytes(purpose, e["job"], e["run"], e["signer"], body).hex() == e["signed_bytes"]
        )
        envelope = seal(body, purpose, job=e["job"], run=e["run"], signer=e["signer"], key=key)
        assert envelope.hex() == e["envelope"]
        parsed = decode_signed(envelope, MAX)
        assert (parsed.body, parsed.signer) == (body, e["signer"])
    chunked = s["chunked_model"]
    r = Reassembler(1 << 20, ttl_s=60.0, max_payload_size=MAX)
    whole = [r.add("model", bytes.fromhex(f), 0.0) for f in chunked["frames"]][-1]
    assert whole is not None and whole.hex() == chunked["envelope"]
    body = open_model(whole, job="demo", key=key.public, max_body_bytes=MAX)
    assert body.hex() == chunked["body"]
    assert decode_model(body).max_payload == chunked["max_payload"]


REJECTS = load("reject.json")["cases"]
KEY = SigningKey.from_seed(bytes.fromhex(load("signed.json")["seed"])).public


def attempt(case: dict[str, Any]) -> None:
    kind = case["kind"]
    if kind in DECODE:
        DECODE[kind](bytes.fromhex(case["hex"]))
    elif kind == "delta":
        entries = msgpack.unpackb(bytes.fromhex(case["entries_msgpack"]), raw=False)
        decode_delta(entries, case["codec"], {s["name"]: tuple(s["shape"]) for s in case["shapes"]})
    elif kind == "topic":
        parse_topic(case["topic"])
    elif kind == "frame":
        decode_frame(bytes.fromhex(case["hex"]), case["max_size"])
    elif kind == "reassemble":
        r = Reassembler(1 << 30, ttl_s=60.0, max_payload_size=case["max_size"])
        for f in case["frames"]:
            r.add("s", bytes.fromhex(f), 0.0)
    elif kind == "signed":
        decode_signed(bytes.fromhex(case["hex"]), case["max_body"])
    elif kind == "open_update":
        open_update(
            bytes.fromhex(case["hex"]),
            job=case["job"],
            run=case["run"],
            agent=case["agent"],
            keys={case["agent"]: KEY},
            max_body_bytes=case["max_body"],
        )
    else:
        assert kind == "open_model", kind
        open_model(
            bytes.fromhex(case["hex"]), job=case["job"], key=KEY, max_body_bytes=case["max_body"]
        )


@pytest.mark.parametrize("case", REJECTS, ids=[c["name"] for c in REJECTS])
def test_must_reject_with_reason(case):
    with pytest.raises(WireError) as excinfo:
        attempt(case)
    assert excinfo.value.reason is RejectReason(case["reason"])


def test_vectors_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location(
        "make_vectors", ROOT / "scripts" / "make_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_vectors", module)
    spec.loader.exec_module(module)
    files = module.build()
    if not SAME_LIBZSTD:
        files.pop("codecs.json")  # its zstd frames are this libzstd's; the rest still must match
    for name, text in files.items():
        assert (VECTORS / name).read_text() == text, f"run: python scripts/make_vectors.py ({name})"
