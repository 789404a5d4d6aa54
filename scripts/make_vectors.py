"""Write protocol/vectors/*.json, the shared golden vectors, from the Python encoders.

    python scripts/make_vectors.py           # rewrite the files
    python scripts/make_vectors.py --check   # exit 1 if a file differs from what it would write

Deterministic: fixed inputs, fixed seeds, fixed keys (RFC 8032 TEST 1), sorted nothing
that has an order of its own. protocol/vectors/README.md says how the files read;
tests/protocol/test_vectors.py (Python) and web/test/protocol/ (JavaScript) check them.
The must-reject inputs are in scripts/vector_rejects.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vector_cohort import cohort_vectors
from vector_deltas import delta_vectors
from vector_rejects import reject_cases

from protocol import (
    ClosedBy,
    ModelAnnouncement,
    Phase,
    Presence,
    RollCall,
    RoundMetrics,
    Status,
    Topics,
    TrainPlan,
    Update,
    encode_delta,
    encode_metrics,
    encode_model,
    encode_presence,
    encode_rollcall,
    encode_status,
    encode_update,
    weights_digest,
)
from protocol.chunks import encode_manifest, split
from protocol.codecs.entropy import zstd_backend
from protocol.compress import decode_delta, downlink_weights
from protocol.keys import SigningKey
from protocol.signing import Purpose, seal, signed_bytes

OUT = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
#: RFC 8032, 7.1, TEST 1: the fixed key of every signed vector
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
WEIGHTS = {
    "w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype="<f4"),
    "b": np.array([0.5, -0.5], dtype="<f4"),
}
MODEL_ID = weights_digest(WEIGHTS)
DELTA = {
    "w": np.array([[0.25, 0.0], [0.0, -0.25]], dtype="<f4"),
    "b": np.array([0.125, 0.0], dtype="<f4"),
}


def f32(a: Any) -> str:
    return np.asarray(a, dtype="<f4").tobytes().hex()


def tensors_doc(weights: dict[str, Any]) -> list[dict[str, Any]]:
    """Named tensors: wire dtype, shape and float32 values (hex, little-endian)."""
    return [
        {"name": n, "shape": list(np.shape(a)), "dtype": np.asarray(a).dtype.str, "f32": f32(a)}
        for n, a in weights.items()
    ]


def plan_doc(p: TrainPlan) -> dict[str, Any]:
    return {
        "epochs": p.epochs,
        "batch_size": p.batch_size,
        "lr": p.lr,
        "seed": p.seed,
        "options": dict(p.options),
    }


def model_vector(name: str, m: ModelAnnouncement) -> dict[str, Any]:
    doc = {
        k: getattr(m, k)
        for k in (
            "job",
            "run",
            "round",
            "attempt",
            "model_id",
            "task",
            "codec",
            "deadline_s",
            "done",
            "issued_at",
            "max_payload",
        )
    }
    doc.update(
        plan=plan_doc(m.plan),
        cohort=list(m.cohort) if m.cohort is not None else None,
        weights=tensors_doc(m.weights),
    )
    return {"name": name, "kind": "model", "message": doc, "hex": encode_model(m).hex()}


def update_vector(name: str, u: Update) -> dict[str, Any]:
    doc = {
        k: getattr(u, k)
        for k in ("job", "agent", "round", "model_id", "samples", "codec", "train_s", "declined")
    }
    tensors = msgpack.packb([dict(t) for t in u.tensors], use_bin_type=True)
    doc.update(metrics=dict(u.metrics), tensors_msgpack=tensors.hex())
    return {"name": name, "kind": "update", "message": doc, "hex": encode_update(u).hex()}


#: fields docs/PROTOCOL.md §15 added to presence and metrics, written only when set: a
#: vector lists them only when its payload holds them (an older decoder knows none of them)
WRITTEN_WHEN_SET = {"deltas": False, "raw_bytes_down": None, "addressed": None,
                    # likewise §4.4's status.mode and §4.5's metrics.staleness (issue 18)
                    "mode": "sync", "staleness": None}


def json_vector(name: str, kind: str, message: Any, payload: bytes) -> dict[str, Any]:
    doc = {
        f: getattr(message, f)
        for f in message.__dataclass_fields__
        if f not in WRITTEN_WHEN_SET or getattr(message, f) != WRITTEN_WHEN_SET[f]
    }
    if doc.get("secagg", 0) is None:  # only SecAgg rounds' metrics have it (PROTOCOL.md §14.8)
        del doc["secagg"]
    doc = {k: v.value if isinstance(v, ClosedBy | Phase) else v for k, v in doc.items()}
    return {
        "name": name,
        "kind": kind,
        "message": doc,
        "hex": payload.hex(),
        "text": payload.decode(),
    }


def golden_model(**changes: Any) -> ModelAnnouncement:
    base: dict[str, Any] = dict(
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
    base.update(changes)
    return ModelAnnouncement(**base)


def golden_update(**changes: Any) -> Update:
    base: dict[str, Any] = dict(
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
    base.update(changes)
    return Update(**base)


def messages() -> dict[str, Any]:
    fp16 = downlink_weights(WEIGHTS, "fp16")
    plan = TrainPlan(
        epochs=2,
        batch_size=8,
        lr=0.1,
        seed=5,
        options={"mu": 0.01, "local_layers": "4.weight,4.bias", "steps": 3},
    )
    status = Status(
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
    )
    metrics = RoundMetrics(
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
    cases = [
        model_vector("model", golden_model()),
        model_vector("model-final", golden_model(done=True, deadline_s=0.0, round=20)),
        model_vector(
            "model-cohort-options-cap",
            golden_model(
                attempt=2,
                cohort=("pi-01", "pi-02"),
                plan=plan,
                codec="topk:0.25+int8+zstd",
                max_payload=1024,
                issued_at=1_700_000_000.25,
            ),
        ),
        model_vector(
            "model-fp16-downlink", golden_model(weights=fp16, model_id=weights_digest(fp16))
        ),
        update_vector("update", golden_update()),
        update_vector(
            "update-declined",
            golden_update(
                samples=0, codec="none", tensors=(), metrics={}, train_s=0.0, declined="busy"
            ),
        ),
        update_vector(
            "update-int8-metrics",
            golden_update(
                codec="int8",
                tensors=tuple(encode_delta(DELTA, "int8")),
                metrics={"loss": 0.25, "accuracy": 0.75},
                train_s=0.125,
            ),
        ),
        json_vector(
            "presence-online",
            "presence",
            p := Presence(
                agent="pi-01",
                online=True,
                samples=500,
                device="rpi4",
                trainer="torch",
                at=1_700_000_000.5,
            ),
            encode_presence(p),
        ),
        json_vector(
            "presence-offline",
            "presence",
            p := Presence(agent="pi-01", online=False, at=1_700_000_000.5),
            encode_presence(p),
        ),
        json_vector(
            "presence-browser",
            "presence",
            p := Presence(
                agent="web-7f3a",
                online=True,
                samples=100,
                device="phone",
                trainer="js",
                at=1e-05,
                kind="browser",
            ),
            encode_presence(p),
        ),
        json_vector("status", "status", status, encode_status(status)),
        json_vector(
            "status-failed",
            "status",
            s := Status(
                job="demo",
                run="r1",
                phase=Phase.FAILED,
                round=3,
                rounds=20,
                attempt=0,
                accepted=0,
                quorum=2,
                min_replies=1,
                cohort_size=0,
                agents_online=0,
                deadline_at=None,
                rejected={},
                at=1e16,
                message="round 3: 0 of 1 replies, café",
            ),
            encode_status(s),
        ),
        json_vector(
            "status-stopped",
            "status",
            s := Status(
                job="demo",
                run="r1",
                phase=Phase.STOPPED,
                round=2,
                rounds=20,
                attempt=0,
                accepted=1,
                quorum=2,
                min_replies=1,
                cohort_size=2,
                agents_online=2,
                deadline_at=1_700_000_030.0,
                rejected={},
                at=1_700_000_003.0,
                message="stopped (SIGTERM) after round 1: resumable",
            ),
            encode_status(s),
        ),
        json_vector(
            "rollcall",
            "rollcall",
            r := RollCall(job="demo", run="r1", at=1_700_000_000.5),
            encode_rollcall(r),
        ),
        json_vector("metrics", "metrics", metrics, encode_metrics(metrics)),
        json_vector(
            "metrics-dp",
            "metrics",
            m := RoundMetrics(
                job="demo",
                run="r1",
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
                train_accuracy=0.5,
                at=3.0,
                epsilon=1.25,
            ),
            encode_metrics(m),
        ),
    ]
    topics = Topics("demo")
    return {
        "messages": cases,
        "topics": {
            "job": "demo",
            "agent": "pi-01",
            "model": topics.model,
            "model_chunk_3": topics.model_chunk(3),
            "model_chunks": topics.all_model_chunks,
            "update": topics.update("pi-01"),
            "presence": topics.presence("pi-01"),
            "status": topics.status,
            "metrics": topics.metrics,
            "rollcall": topics.rollcall,
            "all_updates": topics.all_updates,
            "all_presence": topics.all_presence,
            "everything": topics.everything,
            "agent_subscriptions": [t for t, _ in topics.agent_subscriptions],
        },
    }


#: (name, codec, shapes, seed): one encoding of the same delta each
CODEC_DELTA = {
    "w": np.array([[0.5, -1.25, 0.0], [3.0, -0.0625, 0.75]], dtype="<f4"),
    "b": np.array([1e-3, -2e-3], dtype="<f4"),
    "s": np.array(0.3, dtype="<f4"),
}
CODECS = [
    "none",
    "fp16",
    "int8",
    "int8:block=2",
    "qsgd",
    "qsgd:4,2",
    "topk:0.5",
    "topk:0.34+fp16",
    "topk:0.5+int8",
    "topk:0.5+qsgd:2",
    "zstd",
    "int8+zstd",
    "topk:0.25+int8+zstd:19",
]


def codec_vector(spec: str) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    entries = encode_delta(CODEC_DELTA, spec, rng)
    shapes = {n: a.shape for n, a in CODEC_DELTA.items()}
    decoded = decode_delta(entries, spec, shapes)
    packed = msgpack.packb(entries, use_bin_type=True)
    doc: dict[str, Any] = {
        "codec": spec,
        "delta": tensors_doc(CODEC_DELTA),
        "entries_msgpack": packed.hex(),
        "decoded": tensors_doc(decoded),
    }
    if "qsgd" in spec:
        doc["seed"] = 7
    if "zstd" in spec:
        frame = entries[0]["zstd"]
        doc["inner_msgpack"] = zstd_backend().decompress(frame).hex()
    return doc


def feedback_vector() -> dict[str, Any]:
    """Two rounds of topk:0.34+int8 with error feedback, as edge_agent/feedback.py runs it."""
    from edge_agent.feedback import ErrorFeedback

    fb = ErrorFeedback()
    rounds = []
    second = {n: (a * -0.5).astype("<f4") for n, a in CODEC_DELTA.items()}
    for delta in (CODEC_DELTA, second):
        entries = fb.encode(delta, "topk:0.34+int8", scope="r1")
        assert fb.state is not None
        rounds.append(
            {
                "delta": tensors_doc(delta),
                "entries_msgpack": msgpack.packb(entries, use_bin_type=True).hex(),
                "residual": tensors_doc(fb.state.tensors),
            }
        )
    return {"codec": "topk:0.34+int8", "rounds": rounds}


def codecs() -> dict[str, Any]:
    return {
        "zstd_library": list(zstd_backend().zstd_version_info),
        "cases": [codec_vector(c) for c in CODECS],
        "feedback": feedback_vector(),
    }


def chunks() -> dict[str, Any]:
    payload = encode_update(
        golden_update(
            codec="none",
            tensors=tuple(encode_delta({"w": np.arange(600, dtype="<f4") / 7}, "none")),
        )
    )
    parts = split(payload, 1024)
    assert parts is not None
    manifest, frames = parts
    return {
        "max_payload": 1024,
        "payload": payload.hex(),
        "manifest": encode_manifest(manifest).hex(),
        "digest": manifest.digest,
        "frames": [f.hex() for f in frames],
    }


def signed() -> dict[str, Any]:
    key = SigningKey.from_seed(SEED)
    model = encode_model(golden_model())
    update = encode_update(golden_update())
    cases = []
    for name, body, purpose, signer in (
        ("hello", b"hello", Purpose.UPDATE, "pi-01"),
        ("model", model, Purpose.MODEL, "coordinator"),
        ("update", update, Purpose.UPDATE, "pi-01"),
    ):
        envelope = seal(body, purpose, job="demo", run="r1", signer=signer, key=key)
        cases.append(
            {
                "name": name,
                "purpose": purpose.value,
                "job": "demo",
                "run": "r1",
                "signer": signer,
                "body": body.hex(),
                "signed_bytes": signed_bytes(purpose, "demo", "r1", signer, body).hex(),
                "envelope": envelope.hex(),
            }
        )
    big = {"w": np.arange(400, dtype="<f4") / 3}
    body = encode_model(golden_model(weights=big, model_id=weights_digest(big), max_payload=1024))
    envelope = seal(body, Purpose.MODEL, job="demo", run="r1", signer="coordinator", key=key)
    chunked = split(envelope, 1024)
    assert chunked is not None
    return {
        "seed": SEED.hex(),
        "public": key.public.raw.hex(),
        "private_pem": key.to_pem().decode(),
        "public_pem": key.public.to_pem().decode(),
        "envelopes": cases,
        "chunked_model": {
            "max_payload": 1024,
            "body": body.hex(),
            "envelope": envelope.hex(),
            "manifest": encode_manifest(chunked[0]).hex(),
            "frames": [f.hex() for f in chunked[1]],
        },
    }


def build() -> dict[str, str]:
    """File name -> its exact text."""
    docs = {
        "messages.json": messages(),
        "codecs.json": codecs(),
        "chunks.json": chunks(),
        "signed.json": signed(),
        "reject.json": {"cases": reject_cases()},
        "deltas.json": delta_vectors(tensors_doc),
        "cohort.json": cohort_vectors(golden_model, model_vector),
    }
    return {
        name: json.dumps(doc, indent=1, ensure_ascii=False) + "\n" for name, doc in docs.items()
    }


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [
            n
            for n, text in files.items()
            if not (OUT / n).is_file() or (OUT / n).read_text() != text
        ]
        for name in stale:
            print(f"make_vectors: {OUT / name} is out of date", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"make_vectors: wrote {len(files)} files to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
