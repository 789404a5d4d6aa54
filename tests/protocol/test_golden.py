"""Golden vectors: fixed message <-> exact bytes, checked in both directions.

These bytes pin wire format v1 for docs/PROTOCOL.md and for agents written in
other languages. If a test here fails, the wire format changed: that needs a
schema version bump or a very good reason, and docs/PROTOCOL.md must change with it.

The msgpack vectors are laid out one top-level field per line (key, then value).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

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
    TopicKind,
    TopicRef,
    Topics,
    TrainPlan,
    Update,
    decode_delta,
    decode_model,
    encode_delta,
    parse_topic,
    weights_digest,
)

WEIGHTS = {
    "w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype="<f4"),
    "b": np.array([0.5, -0.5], dtype="<f4"),
}
MODEL_ID = "e7e50b1c96ce0d9f4140c608f1c15fc7"
DELTA = {
    "w": np.array([[0.25, 0.0], [0.0, -0.25]], dtype="<f4"),
    "b": np.array([0.125, 0.0], dtype="<f4"),
}

MODEL = ModelAnnouncement(
    job="demo",
    run="r1",
    round=1,
    attempt=0,
    model_id=MODEL_ID,
    task="mnist-2nn",
    plan=TrainPlan(epochs=1, batch_size=32, lr=0.05, seed=0, options={}),
    codec="none",
    deadline_s=30.0,
    cohort=None,
    done=False,
    issued_at=1_700_000_000.0,
    weights=WEIGHTS,
)
MODEL_BYTES = bytes.fromhex(
    "de0010"  # map16 of 16
    "a176 01"  # v: 1
    "a474797065 a56d6f64656c"  # type: "model"
    "a36a6f62 a464656d6f"  # job: "demo"
    "a372756e a27231"  # run: "r1"
    "a5726f756e64 01"  # round: 1
    "a7617474656d7074 00"  # attempt: 0
    "a86d6f64656c5f6964"  # model_id: str8 of 32 chars
    "d920 6537653530623163393663653064396634313430633630386631633135666337"
    "a47461736b a96d6e6973742d326e6e"  # task: "mnist-2nn"
    "a4706c616e 85"  # plan: map of 5
    "a665706f636873 01"  # epochs: 1
    "aa62617463685f73697a65 20"  # batch_size: 32
    "a26c72 cb3fa999999999999a"  # lr: 0.05 (float64)
    "a473656564 00"  # seed: 0
    "a76f7074696f6e73 80"  # options: {}
    "a5636f646563 a46e6f6e65"  # codec: "none"
    "aa646561646c696e655f73 cb403e000000000000"  # deadline_s: 30.0
    "a6636f686f7274 c0"  # cohort: nil
    "a4646f6e65 c2"  # done: false
    "a96973737565645f6174 cb41d954fc40000000"  # issued_at: 1700000000.0
    "ab6d61785f7061796c6f6164 00"  # max_payload: 0 (no cap)
    "a774656e736f7273 92"  # tensors: array of 2
    "84 a46e616d65 a177"  # name: "w"
    "a56474797065 a33c6634"  # dtype: "<f4"
    "a57368617065 920202"  # shape: [2, 2]
    "a464617461 c410 0000803f 00000040 00004040 00008040"  # data: bin8, 1.0 2.0 3.0 4.0
    "84 a46e616d65 a162"  # name: "b"
    "a56474797065 a33c6634"  # dtype: "<f4"
    "a57368617065 9102"  # shape: [2]
    "a464617461 c408 0000003f 000000bf"  # data: bin8, 0.5 -0.5
)

UPDATE = Update(
    job="demo",
    agent="pi-01",
    round=1,
    model_id=MODEL_ID,
    samples=500,
    codec="fp16",
    tensors=tuple(encode_delta(DELTA, "fp16")),
    metrics={"loss": 0.5},
    train_s=1.5,
    declined=None,
)
UPDATE_BYTES = bytes.fromhex(
    "8c"  # map of 12
    "a176 01"  # v: 1
    "a474797065 a6757064617465"  # type: "update"
    "a36a6f62 a464656d6f"  # job: "demo"
    "a56167656e74 a570692d3031"  # agent: "pi-01"
    "a5726f756e64 01"  # round: 1
    "a86d6f64656c5f6964"  # model_id
    "d920 6537653530623163393663653064396634313430633630386631633135666337"
    "a773616d706c6573 cd01f4"  # samples: 500 (uint16)
    "a5636f646563 a466703136"  # codec: "fp16"
    "a76d657472696373 81 a46c6f7373 cb3fe0000000000000"  # metrics: {"loss": 0.5}
    "a7747261696e5f73 cb3ff8000000000000"  # train_s: 1.5
    "a86465636c696e6564 c0"  # declined: nil
    "a774656e736f7273 92"  # tensors: array of 2
    "84 a46e616d65 a177"  # name: "w"
    "a56474797065 a33c6632"  # dtype: "<f2"
    "a57368617065 920202"  # shape: [2, 2]
    "a464617461 c408 0034 0000 0000 00b4"  # data: 0.25 0 0 -0.25 as float16
    "84 a46e616d65 a162"  # name: "b"
    "a56474797065 a33c6632"  # dtype: "<f2"
    "a57368617065 9102"  # shape: [2]
    "a464617461 c404 0030 0000"  # data: 0.125 0 as float16
)

DECLINE = Update(
    job="demo",
    agent="pi-01",
    round=1,
    model_id=MODEL_ID,
    samples=0,
    codec="none",
    tensors=(),
    declined="busy",
)
DECLINE_BYTES = bytes.fromhex(
    "8c"  # map of 12
    "a176 01"  # v: 1
    "a474797065 a6757064617465"  # type: "update"
    "a36a6f62 a464656d6f"  # job: "demo"
    "a56167656e74 a570692d3031"  # agent: "pi-01"
    "a5726f756e64 01"  # round: 1
    "a86d6f64656c5f6964"  # model_id
    "d920 6537653530623163393663653064396634313430633630386631633135666337"
    "a773616d706c6573 00"  # samples: 0
    "a5636f646563 a46e6f6e65"  # codec: "none"
    "a76d657472696373 80"  # metrics: {}
    "a7747261696e5f73 cb0000000000000000"  # train_s: 0.0
    "a86465636c696e6564 a462757379"  # declined: "busy"
    "a774656e736f7273 90"  # tensors: []
)

PRESENCE = Presence(
    agent="pi-01", online=True, samples=500, device="rpi4", trainer="torch", at=1_700_000_000.5
)
PRESENCE_BYTES = (
    b'{"v":1,"type":"presence","agent":"pi-01","state":"online","at":1700000000.5,'
    b'"samples":500,"device":"rpi4","trainer":"torch"}'
)

OFFLINE = Presence(agent="pi-01", online=False, at=1_700_000_000.5)
OFFLINE_BYTES = b'{"v":1,"type":"presence","agent":"pi-01","state":"offline","at":1700000000.5}'

STATUS = Status(
    job="demo",
    run="r1",
    phase=Phase.TRAINING,
    round=1,
    rounds=20,
    attempt=0,
    accepted=1,
    quorum=2,
    min_replies=1,
    cohort_size=2,
    agents_online=2,
    deadline_at=1_700_000_030.0,
    rejected={"stale": 1},
    at=1_700_000_001.0,
    message="",
)
STATUS_BYTES = (
    b'{"v":1,"type":"status","job":"demo","run":"r1","phase":"training","round":1,'
    b'"rounds":20,"attempt":0,"accepted":1,"quorum":2,"min_replies":1,"cohort_size":2,'
    b'"agents_online":2,"deadline_at":1700000030.0,"rejected":{"stale":1},'
    b'"at":1700000001.0,"message":""}'
)

METRICS = RoundMetrics(
    job="demo",
    run="r1",
    round=1,
    closed_by=ClosedBy.QUORUM,
    accepted=2,
    declined=0,
    rejected={},
    samples=1000,
    duration_s=2.5,
    bytes_up=300,
    bytes_down=400,
    raw_bytes_up=500,
    accuracy=0.875,
    loss=0.5,
    at=1_700_000_002.0,
)
METRICS_BYTES = (
    b'{"v":1,"type":"metrics","job":"demo","run":"r1","round":1,"closed_by":"quorum",'
    b'"accepted":2,"declined":0,"rejected":{},"samples":1000,"duration_s":2.5,'
    b'"bytes_up":300,"bytes_down":400,"raw_bytes_up":500,"at":1700000002.0,'
    b'"accuracy":0.875,"loss":0.5,"train_loss":null,"train_accuracy":null}'
)

#: (kind, message, bytes), one case per id: one table read in both directions.
GOLDEN = [
    pytest.param("model", MODEL, MODEL_BYTES, id="model"),
    pytest.param("update", UPDATE, UPDATE_BYTES, id="update"),
    pytest.param("update", DECLINE, DECLINE_BYTES, id="update-declined"),
    pytest.param("presence", PRESENCE, PRESENCE_BYTES, id="presence-online"),
    pytest.param("presence", OFFLINE, OFFLINE_BYTES, id="presence-offline"),
    pytest.param("status", STATUS, STATUS_BYTES, id="status"),
    pytest.param("metrics", METRICS, METRICS_BYTES, id="metrics"),
]


@pytest.mark.parametrize(("kind", "message", "golden"), GOLDEN)
def test_encode_matches_golden(kinds, kind, message, golden):
    assert kinds[kind].encode(message) == golden


@pytest.mark.parametrize(("kind", "message", "golden"), GOLDEN)
def test_decode_matches_golden(kinds, same, kind, message, golden):
    same(kinds[kind].decode(golden), message)


def test_model_weights_are_float32_in_announced_order():
    decoded = decode_model(MODEL_BYTES).weights
    assert list(decoded) == ["w", "b"]
    assert all(a.dtype == np.float32 for a in decoded.values())


def test_weights_digest_golden():
    assert weights_digest(WEIGHTS) == MODEL_ID


def test_weights_digest_matches_documented_algorithm():
    # The byte-exact recipe in docs/PROTOCOL.md, written out independently.
    h = hashlib.sha256()
    h.update(b"w|(2, 2)|" + np.array([1, 2, 3, 4], dtype="<f4").tobytes())
    h.update(b"b|(2,)|" + np.array([0.5, -0.5], dtype="<f4").tobytes())
    assert h.hexdigest()[:32] == MODEL_ID
    scalar = hashlib.sha256(b"s|()|" + np.float32(1.5).tobytes()).hexdigest()[:32]
    assert weights_digest({"s": np.float32(1.5)}) == scalar
    cube = hashlib.sha256(b"c|(1, 1, 1)|" + np.float32(0).tobytes()).hexdigest()[:32]
    assert weights_digest({"c": np.zeros((1, 1, 1), np.float32)}) == cube


def test_fp16_delta_golden_decodes_to_float32():
    shapes = {name: a.shape for name, a in DELTA.items()}
    delta = decode_delta(UPDATE.tensors, "fp16", shapes)
    assert list(delta) == ["w", "b"]
    for name, want in DELTA.items():
        assert delta[name].dtype == np.float32
        np.testing.assert_array_equal(delta[name], want)


TOPICS = [
    ("fedmq/v1/demo/model", TopicRef("demo", TopicKind.MODEL)),
    ("fedmq/v1/demo/status", TopicRef("demo", TopicKind.STATUS)),
    ("fedmq/v1/demo/metrics", TopicRef("demo", TopicKind.METRICS)),
    ("fedmq/v1/demo/update/pi-01", TopicRef("demo", TopicKind.UPDATE, "pi-01")),
    ("fedmq/v1/demo/agents/pi-01", TopicRef("demo", TopicKind.AGENTS, "pi-01")),
]


def test_topic_names_golden():
    t = Topics("demo")
    built = [t.model, t.status, t.metrics, t.update("pi-01"), t.presence("pi-01")]
    assert built == [name for name, _ in TOPICS]
    assert t.all_updates == "fedmq/v1/demo/update/+"
    assert t.all_presence == "fedmq/v1/demo/agents/+"
    assert t.everything == "fedmq/v1/demo/#"


@pytest.mark.parametrize(("topic", "ref"), TOPICS, ids=[name for name, _ in TOPICS])
def test_parse_topic_golden(topic, ref):
    assert parse_topic(topic) == ref


def test_reject_reason_wire_strings():
    # These strings appear in status and metrics documents: they are wire format too.
    assert {r.name: r.value for r in RejectReason} == {
        "MALFORMED": "malformed",
        "BAD_VERSION": "bad_version",
        "WRONG_JOB": "wrong_job",
        "AGENT_MISMATCH": "agent_mismatch",
        "STALE": "stale",
        "WRONG_RUN": "wrong_run",
        "FUTURE_ROUND": "future_round",
        "BASE_MISMATCH": "base_mismatch",
        "DUPLICATE": "duplicate",
        "UNKNOWN_AGENT": "unknown_agent",
        "NOT_IN_COHORT": "not_in_cohort",
        "TENSOR_MISMATCH": "tensor_mismatch",
        "NON_FINITE": "non_finite",
        "TOO_LARGE": "too_large",
        "BAD_CODEC": "bad_codec",
        "NO_ROUND": "no_round",
        "UNSIGNED": "unsigned",
        "BAD_SIGNATURE": "bad_signature",
        "OUT_OF_PHASE": "out_of_phase",
        "BAD_KEY": "bad_key",
        "BAD_SHARE": "bad_share",
        "BAD_STATE": "bad_state",
        "DIGEST_MISMATCH": "digest_mismatch",
    }


def test_enum_wire_strings():
    assert [p.value for p in Phase] == ["waiting", "training", "evaluating", "done", "failed"]
    assert [c.value for c in ClosedBy] == ["quorum", "all_replied", "deadline"]


def test_protocol_doc_shows_the_golden_bytes():
    # docs/PROTOCOL.md section 10 annotates MODEL_BYTES: hex on the left, a comment after
    # three or more spaces. Keep the page and the vector from drifting apart.
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    section = doc[doc.index("## 10. Golden vectors") :]
    dump, presence = re.findall(r"```\n(.*?)```", section, flags=re.DOTALL)[:2]
    hex_columns = [re.split(r" {3,}", line.strip())[0] for line in dump.splitlines()]
    assert bytes.fromhex(" ".join(hex_columns)) == MODEL_BYTES
    assert presence.strip().encode() == PRESENCE_BYTES


def test_shared_vectors_hold_these_bytes():
    # protocol/vectors/messages.json (checked both ways by test_vectors.py and the JS tests)
    # carries the same messages: the annotated bytes here and the shared file cannot drift.
    shared = json.loads((Path(__file__).parents[2] / "protocol/vectors/messages.json").read_text())
    by_name = {v["name"]: bytes.fromhex(v["hex"]) for v in shared["messages"]}
    for param in GOLDEN:
        assert by_name[param.id] == param.values[2], param.id
