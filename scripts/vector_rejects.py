"""The must-reject inputs of protocol/vectors/reject.json, each with the reason it earns.

Every case is built by changing one thing in a valid message, then run through the
Python decoder here: the generator refuses to write a case whose reason Python does
not give, so the file states what the reference implementation does.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from protocol import (
    RejectReason,
    WireError,
    decode_delta,
    decode_metrics,
    decode_model,
    decode_presence,
    decode_status,
    decode_update,
    encode_delta,
    parse_topic,
)
from protocol.chunks import Reassembler, decode_frame, split
from protocol.codecs.entropy import zstd_backend
from protocol.keys import SigningKey, VerifyKey
from protocol.signing import Purpose, decode_signed, open_model, open_update, seal

SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SHAPES = {"w": (2, 2), "b": (2,)}
DELTA = {"w": np.array([[0.25, 0.0], [0.0, -0.25]], "<f4"), "b": np.array([0.125, 0.0], "<f4")}
MODEL_ID = "e7e50b1c96ce0d9f4140c608f1c15fc7"
_MAX = 64 * 1024 * 1024
R = RejectReason


def _model_doc() -> dict[str, Any]:
    t = [
        {"name": "w", "dtype": "<f4", "shape": [2, 2], "data": np.arange(4, dtype="<f4").tobytes()},
        {"name": "b", "dtype": "<f4", "shape": [2], "data": np.zeros(2, "<f4").tobytes()},
    ]
    return {
        "v": 1,
        "type": "model",
        "job": "demo",
        "run": "r1",
        "round": 1,
        "attempt": 0,
        "model_id": MODEL_ID,
        "task": "digits",
        "plan": {"epochs": 1, "batch_size": 32, "lr": 0.05, "seed": 0, "options": {}},
        "codec": "none",
        "deadline_s": 30.0,
        "cohort": None,
        "done": False,
        "issued_at": 1.0,
        "max_payload": 0,
        "tensors": t,
    }


def _update_doc() -> dict[str, Any]:
    return {
        "v": 1,
        "type": "update",
        "job": "demo",
        "agent": "pi-01",
        "round": 1,
        "model_id": MODEL_ID,
        "samples": 10,
        "codec": "none",
        "metrics": {"loss": 0.5},
        "train_s": 1.0,
        "declined": None,
        "tensors": encode_delta(DELTA, "none"),
    }


JSON_DOCS = {
    "presence": {"v": 1, "type": "presence", "agent": "pi-01", "state": "online", "at": 1.0},
    "status": {
        "v": 1,
        "type": "status",
        "job": "demo",
        "run": "r1",
        "phase": "training",
        "round": 1,
        "rounds": 2,
        "attempt": 0,
        "accepted": 0,
        "quorum": 1,
        "min_replies": 1,
        "cohort_size": 1,
        "agents_online": 1,
        "deadline_at": None,
        "rejected": {},
        "at": 1.0,
        "message": "",
    },
    "metrics": {
        "v": 1,
        "type": "metrics",
        "job": "demo",
        "run": "r1",
        "round": 1,
        "closed_by": "quorum",
        "accepted": 1,
        "declined": 0,
        "rejected": {},
        "samples": 10,
        "duration_s": 1.0,
        "bytes_up": 1,
        "bytes_down": 1,
        "raw_bytes_up": 1,
        "at": 1.0,
        "accuracy": None,
        "loss": None,
        "train_loss": None,
        "train_accuracy": None,
    },
}
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "model": decode_model,
    "update": decode_update,
    "presence": decode_presence,
    "status": decode_status,
    "metrics": decode_metrics,
}


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``path`` (dotted; list indices as numbers) set, or removed."""
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = out
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    key: Any = int(last) if isinstance(node, list) else last
    if value is _DROP:
        del node[key]
    else:
        node[key] = value
    return out


_DROP = object()


def _mp(doc: Any) -> bytes:
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def _js(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _message_cases() -> list[tuple[str, str, bytes, RejectReason]]:
    m, u = _model_doc(), _update_doc()
    cases: list[tuple[str, str, bytes, RejectReason]] = [
        ("model-empty", "model", b"", R.MALFORMED),
        ("model-not-a-map", "model", _mp([1, 2]), R.MALFORMED),
        ("model-trailing-byte", "model", _mp(m) + b"\x00", R.MALFORMED),
        ("model-cut-short", "model", _mp(m)[:-1], R.MALFORMED),
        ("model-reserved-byte", "model", b"\xc1", R.MALFORMED),
        ("model-int-map-key", "model", _mp({1: 1}), R.MALFORMED),
        ("model-bad-utf8", "model", _mp(m).replace(b"\xa4demo", b"\xa4dem\xff"), R.MALFORMED),
        ("model-v-float", "model", _mp(_set(m, "v", 1.0)), R.BAD_VERSION),
        ("model-v-true", "model", _mp(_set(m, "v", True)), R.BAD_VERSION),
        ("model-v-2", "model", _mp(_set(m, "v", 2)), R.BAD_VERSION),
        ("model-v-missing", "model", _mp(_set(m, "v", _DROP)), R.BAD_VERSION),
        ("model-type-update", "model", _mp(_set(m, "type", "update")), R.MALFORMED),
        ("model-round-float", "model", _mp(_set(m, "round", 1.0)), R.MALFORMED),
        ("model-round-zero", "model", _mp(_set(m, "round", 0)), R.MALFORMED),
        ("model-round-string", "model", _mp(_set(m, "round", "1")), R.MALFORMED),
        ("model-round-huge", "model", _mp(_set(m, "round", 2**64 - 1)), R.MALFORMED),
        ("model-job-slash", "model", _mp(_set(m, "job", "a/b")), R.MALFORMED),
        ("model-job-newline", "model", _mp(_set(m, "job", "demo\n")), R.MALFORMED),
        ("model-job-ext", "model", _mp(_set(m, "job", msgpack.ExtType(5, b"x"))), R.MALFORMED),
        ("model-task-257", "model", _mp(_set(m, "task", "é" * 257)), R.MALFORMED),
        ("model-lr-nan", "model", _mp(_set(m, "plan.lr", float("nan"))), R.NON_FINITE),
        ("model-lr-bool", "model", _mp(_set(m, "plan.lr", True)), R.MALFORMED),
        ("model-deadline-inf", "model", _mp(_set(m, "deadline_s", float("inf"))), R.NON_FINITE),
        ("model-plan-null", "model", _mp(_set(m, "plan", None)), R.MALFORMED),
        ("model-options-null", "model", _mp(_set(m, "plan.options", None)), R.MALFORMED),
        (
            "model-option-nan",
            "model",
            _mp(_set(m, "plan.options", {"mu": float("nan")})),
            R.NON_FINITE,
        ),
        ("model-option-list", "model", _mp(_set(m, "plan.options", {"mu": [1]})), R.MALFORMED),
        ("model-done-int", "model", _mp(_set(m, "done", 1)), R.MALFORMED),
        ("model-cohort-bad-id", "model", _mp(_set(m, "cohort", ["ok", "no way"])), R.MALFORMED),
        ("model-max-payload-small", "model", _mp(_set(m, "max_payload", 1000)), R.MALFORMED),
        ("model-no-tensors", "model", _mp(_set(m, "tensors", [])), R.MALFORMED),
        ("model-4097-tensors", "model", _mp(_set(m, "tensors", [{}] * 4097)), R.TOO_LARGE),
        ("model-duplicate-tensor", "model", _mp(_set(m, "tensors.1.name", "w")), R.MALFORMED),
        ("model-int-weights", "model", _mp(_set(m, "tensors.1.dtype", "<i4")), R.MALFORMED),
        ("model-big-endian", "model", _mp(_set(m, "tensors.1.dtype", ">f4")), R.MALFORMED),
        ("model-short-data", "model", _mp(_set(m, "tensors.1.data", b"\x00" * 7)), R.MALFORMED),
        ("model-shape-bool", "model", _mp(_set(m, "tensors.1.shape", [True, 2])), R.MALFORMED),
        ("model-shape-9-dims", "model", _mp(_set(m, "tensors.1.shape", [1] * 9)), R.MALFORMED),
        (
            "model-zero-size-overflow",
            "model",
            _mp(_set(_set(m, "tensors.1.shape", [0, 2**40, 2**40]), "tensors.1.data", b"")),
            R.MALFORMED,
        ),
        (
            "model-nan-weight",
            "model",
            _mp(_set(m, "tensors.1.data", np.array([0, np.nan], "<f4").tobytes())),
            R.NON_FINITE,
        ),
        (
            "model-f8-overflow",
            "model",
            _mp(
                _set(
                    _set(m, "tensors.1.dtype", "<f8"),
                    "tensors.1.data",
                    np.array([0, 1e300], "<f8").tobytes(),
                )
            ),
            R.NON_FINITE,
        ),
        (
            "model-f2-inf",
            "model",
            _mp(
                _set(_set(m, "tensors.1.dtype", "<f2"), "tensors.1.data", bytes.fromhex("0000007c"))
            ),
            R.NON_FINITE,
        ),
        ("update-no-tensors", "update", _mp(_set(u, "tensors", [])), R.MALFORMED),
        ("update-tensor-not-map", "update", _mp(_set(u, "tensors", [1])), R.MALFORMED),
        ("update-samples-zero", "update", _mp(_set(u, "samples", 0)), R.MALFORMED),
        ("update-metric-string", "update", _mp(_set(u, "metrics", {"loss": "low"})), R.MALFORMED),
        (
            "update-metric-inf",
            "update",
            _mp(_set(u, "metrics", {"loss": float("inf")})),
            R.NON_FINITE,
        ),
        ("update-train-s-negative", "update", _mp(_set(u, "train_s", -1.0)), R.MALFORMED),
        ("update-agent-bad-id", "update", _mp(_set(u, "agent", "-x")), R.MALFORMED),
        ("decline-with-tensors", "update", _mp(_set(u, "declined", "busy")), R.MALFORMED),
        (
            "decline-with-samples",
            "update",
            _mp(_set(_set(u, "declined", "busy"), "tensors", [])),
            R.MALFORMED,
        ),
        (
            "decline-reason-257",
            "update",
            _mp(_set(_set(_set(u, "declined", "x" * 257), "tensors", []), "samples", 0)),
            R.MALFORMED,
        ),
    ]
    for kind, doc in JSON_DOCS.items():
        cases += [
            (f"{kind}-not-json", kind, b"{", R.MALFORMED),
            (f"{kind}-bom", kind, b"\xef\xbb\xbf" + _js(doc), R.MALFORMED),
            (f"{kind}-bad-utf8", kind, _js(doc).replace(b'"v"', b'"\xff"', 1), R.MALFORMED),
            (f"{kind}-v-float", kind, _js(_set(doc, "v", 1.0)), R.BAD_VERSION),
            (f"{kind}-list", kind, _js([doc]), R.MALFORMED),
            (f"{kind}-at-nan", kind, _js(doc).replace(b'"at":1.0', b'"at":NaN'), R.NON_FINITE),
            (
                f"{kind}-at-huge-int",
                kind,
                _js(doc).replace(b'"at":1.0', b'"at":' + b"9" * 400),
                R.MALFORMED,
            ),
        ]
    cases += [
        (
            "presence-over-64-kib",
            "presence",
            _js(_set(JSON_DOCS["presence"], "pad", "x" * 65536)),
            R.TOO_LARGE,
        ),
        (
            "presence-state-away",
            "presence",
            _js(_set(JSON_DOCS["presence"], "state", "away")),
            R.MALFORMED,
        ),
        (
            "presence-samples-float",
            "presence",
            _js(_set(JSON_DOCS["presence"], "samples", 5.0)),
            R.MALFORMED,
        ),
        (
            "presence-kind-65",
            "presence",
            _js(_set(JSON_DOCS["presence"], "kind", "k" * 65)),
            R.MALFORMED,
        ),
        (
            "status-phase-sleeping",
            "status",
            _js(_set(JSON_DOCS["status"], "phase", "sleeping")),
            R.MALFORMED,
        ),
        (
            "status-rejected-negative",
            "status",
            _js(_set(JSON_DOCS["status"], "rejected", {"stale": -1})),
            R.MALFORMED,
        ),
        ("metrics-round-zero", "metrics", _js(_set(JSON_DOCS["metrics"], "round", 0)), R.MALFORMED),
        (
            "metrics-closed-by-luck",
            "metrics",
            _js(_set(JSON_DOCS["metrics"], "closed_by", "luck")),
            R.MALFORMED,
        ),
        (
            "metrics-control-char",
            "metrics",
            _js(JSON_DOCS["metrics"]).replace(b'"r1"', b'"r\x011"'),
            R.MALFORMED,
        ),
    ]
    return cases


def _delta_cases() -> list[tuple[str, str, list[Any], RejectReason]]:
    none = encode_delta(DELTA, "none")
    topk = encode_delta(DELTA, "topk:0.5+int8")
    int8 = encode_delta(DELTA, "int8")
    z = encode_delta(DELTA, "int8+zstd")
    inner = _mp(int8)
    zstd = zstd_backend()
    flush, flag = zstd.ZstdCompressor.FLUSH_FRAME, zstd.CompressionParameter
    chk = zstd.ZstdCompressor(options={flag.checksum_flag: 1}).compress(inner, flush)
    nosize = zstd.ZstdCompressor(options={flag.content_size_flag: 0}).compress(inner, flush)
    return [
        ("delta-unknown-codec", "gzip", none, R.BAD_CODEC),
        ("delta-codec-spaces", "int8 ", int8, R.BAD_CODEC),
        ("delta-codec-out-of-order", "int8+topk", int8, R.BAD_CODEC),
        ("delta-renamed", "none", [_set(none[0], "name", "W"), none[1]], R.TENSOR_MISMATCH),
        ("delta-reordered", "none", [none[1], none[0]], R.TENSOR_MISMATCH),
        ("delta-wrong-dtype", "fp16", none, R.BAD_CODEC),
        ("delta-wrong-shape", "none", [_set(none[0], "shape", [4]), none[1]], R.TENSOR_MISMATCH),
        ("delta-shape-not-list", "none", [_set(none[0], "shape", 4), none[1]], R.MALFORMED),
        (
            "delta-nan",
            "none",
            [none[0], _set(none[1], "data", np.array([np.nan, 0], "<f4").tobytes())],
            R.NON_FINITE,
        ),
        ("delta-int8-no-scale", "int8", [_set(int8[0], "scale", _DROP), int8[1]], R.BAD_CODEC),
        (
            "delta-int8-q-128",
            "int8",
            [_set(int8[0], "q.data", b"\x80\x00\x00\x00"), int8[1]],
            R.BAD_CODEC,
        ),
        (
            "delta-int8-zero-step",
            "int8",
            [_set(int8[0], "scale.data", b"\x00" * 4), int8[1]],
            R.BAD_CODEC,
        ),
        (
            "delta-int8-overflow",
            "int8",
            [_set(int8[0], "scale.data", np.array([3e38], "<f4").tobytes()), int8[1]],
            R.NON_FINITE,
        ),
        (
            "delta-int8-scale-count",
            "int8",
            [_set(int8[0], "scale", {"dtype": "<f4", "shape": [2], "data": b"\x00" * 8}), int8[1]],
            R.TOO_LARGE,
        ),
        ("delta-topk-no-idx", "topk:0.5+int8", [_set(topk[0], "idx", _DROP), topk[1]], R.BAD_CODEC),
        (
            "delta-topk-idx-beyond",
            "topk:0.5+int8",
            [_set(topk[0], "idx.data", b"\x03\x00"), topk[1]],
            R.BAD_CODEC,
        ),
        (
            "delta-topk-idx-overlong",
            "topk:0.5+int8",
            [_set(_set(topk[0], "idx.data", b"\x80\x00"), "idx.shape", [2]), topk[1]],
            R.BAD_CODEC,
        ),
        (
            "delta-topk-idx-truncated",
            "topk:0.5+int8",
            [_set(topk[0], "idx.data", b"\x00\x81"), topk[1]],
            R.BAD_CODEC,
        ),
        ("delta-zstd-two-entries", "int8+zstd", z + z, R.BAD_CODEC),
        ("delta-zstd-size-too-big", "int8+zstd", [_set(z[0], "size", 10**6)], R.TOO_LARGE),
        ("delta-zstd-size-lies", "int8+zstd", [_set(z[0], "size", z[0]["size"] - 1)], R.MALFORMED),
        (
            "delta-zstd-no-content-size",
            "int8+zstd",
            [{"zstd": nosize, "size": len(inner)}],
            R.MALFORMED,
        ),
        ("delta-zstd-checksum", "int8+zstd", [{"zstd": chk, "size": len(inner)}], R.MALFORMED),
        (
            "delta-zstd-trailing",
            "int8+zstd",
            [{"zstd": z[0]["zstd"] + b"\x00", "size": z[0]["size"]}],
            R.MALFORMED,
        ),
        ("delta-zstd-not-a-frame", "int8+zstd", [{"zstd": b"hello", "size": 5}], R.MALFORMED),
    ]


def _chunk_cases() -> list[dict[str, Any]]:
    parts = split(bytes(range(256)) * 8, 1024)
    assert parts is not None
    frames = [msgpack.unpackb(f, raw=False) for f in parts[1]]
    f0 = frames[0]
    singles = [
        ("frame-digest-uppercase", _set(f0, "digest", f0["digest"].upper()), R.MALFORMED),
        ("frame-digest-short", _set(f0, "digest", f0["digest"][:63]), R.MALFORMED),
        ("frame-v-true", _set(f0, "v", True), R.MALFORMED),
        ("frame-index-beyond", _set(f0, "index", f0["count"]), R.MALFORMED),
        ("frame-count-zero", _set(f0, "count", 0), R.MALFORMED),
        ("frame-size-below-count", _set(f0, "size", 1), R.MALFORMED),
        ("frame-size-over-limit", _set(f0, "size", 10**9), R.TOO_LARGE),
        ("frame-empty-data", _set(f0, "data", b""), R.MALFORMED),
        ("frame-type-model", _set(f0, "type", "model"), R.MALFORMED),
    ]
    out = [
        {"name": n, "kind": "frame", "hex": _mp(d).hex(), "max_size": _MAX, "reason": r.value}
        for n, d, r in singles
    ]
    for name, seq, reason in (
        ("reassemble-disagreeing-count", [frames[0], _set(frames[1], "count", 9)], R.MALFORMED),
        ("reassemble-bad-digest", [_set(f, "digest", "0" * 64) for f in frames], R.MALFORMED),
    ):
        hexes = [_mp(f).hex() for f in seq]
        _expect(lambda h=hexes: _reassemble(h), reason, name)
        out.append(
            {
                "name": name,
                "kind": "reassemble",
                "frames": hexes,
                "max_size": _MAX,
                "reason": reason.value,
            }
        )
    for case in out[: len(singles)]:
        _expect(
            lambda c=case: decode_frame(bytes.fromhex(c["hex"]), c["max_size"]),
            R(case["reason"]),
            case["name"],
        )
    return out


def _reassemble(hexes: list[str]) -> None:
    r = Reassembler(1 << 30, ttl_s=60.0, max_payload_size=_MAX)
    for h in hexes:
        r.add("s", bytes.fromhex(h), 0.0)


def _signed_cases() -> list[dict[str, Any]]:
    key = SigningKey.from_seed(SEED)
    other = SigningKey.from_seed(bytes(32))
    body = _mp(_update_doc())
    good = seal(body, Purpose.UPDATE, job="demo", run="r1", signer="pi-01", key=key)
    env = msgpack.unpackb(good, raw=False)
    forged = seal(body, Purpose.UPDATE, job="demo", run="r1", signer="pi-01", key=other)
    model = seal(
        _mp(_model_doc()), Purpose.MODEL, job="demo", run="r1", signer="coordinator", key=key
    )
    cases = [
        ("open-update-unsigned", "open_update", body, R.UNSIGNED),
        ("open-update-v-float", "open_update", _mp(_set(env, "v", 1.0)), R.BAD_VERSION),
        ("open-update-short-sig", "open_update", _mp(_set(env, "sig", b"\x00" * 63)), R.MALFORMED),
        ("open-update-purpose-model", "open_update", model, R.MALFORMED),
        (
            "open-update-other-job",
            "open_update",
            seal(body, Purpose.UPDATE, job="other", run="r1", signer="pi-01", key=key),
            R.WRONG_JOB,
        ),
        (
            "open-update-other-signer",
            "open_update",
            seal(body, Purpose.UPDATE, job="demo", run="r1", signer="pi-02", key=key),
            R.AGENT_MISMATCH,
        ),
        (
            "open-update-other-run",
            "open_update",
            seal(body, Purpose.UPDATE, job="demo", run="r0", signer="pi-01", key=key),
            R.WRONG_RUN,
        ),
        ("open-update-wrong-key", "open_update", forged, R.BAD_SIGNATURE),
        (
            "open-update-altered-body",
            "open_update",
            _mp(_set(env, "body", body + b"\x00")),
            R.BAD_SIGNATURE,
        ),
        ("open-model-unsigned", "open_model", _mp(_model_doc()), R.UNSIGNED),
        ("open-model-purpose-update", "open_model", good, R.MALFORMED),
        (
            "open-model-wrong-key",
            "open_model",
            seal(
                _mp(_model_doc()),
                Purpose.MODEL,
                job="demo",
                run="r1",
                signer="coordinator",
                key=other,
            ),
            R.BAD_SIGNATURE,
        ),
    ]
    keys = {"pi-01": key.public}
    out = []
    for name, kind, payload, reason in cases:
        if kind == "open_update":
            _expect(
                lambda p=payload: open_update(
                    p, job="demo", run="r1", agent="pi-01", keys=keys, max_body_bytes=_MAX
                ),
                reason,
                name,
            )
        else:
            _expect(
                lambda p=payload: open_model(
                    p, job="demo", key=VerifyKey(key.public.raw), max_body_bytes=_MAX
                ),
                reason,
                name,
            )
        out.append(
            {
                "name": name,
                "kind": kind,
                "hex": payload.hex(),
                "job": "demo",
                "run": "r1",
                "agent": "pi-01",
                "max_body": _MAX,
                "reason": reason.value,
            }
        )
    _expect(lambda: decode_signed(good, 10), R.TOO_LARGE, "signed-too-large")
    out.append(
        {
            "name": "signed-too-large",
            "kind": "signed",
            "hex": good.hex(),
            "max_body": 10,
            "reason": "too_large",
        }
    )
    return out


def _expect(call: Callable[[], Any], reason: RejectReason, name: str) -> None:
    try:
        call()
    except WireError as exc:
        if exc.reason is not reason:
            detail = f"{name}: Python says {exc.reason.value}, the table {reason.value}"
            raise AssertionError(detail) from None
        return
    raise AssertionError(f"{name}: Python accepts it")


def reject_cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, kind, payload, reason in _message_cases():
        _expect(lambda k=kind, p=payload: DECODERS[k](p), reason, name)
        out.append({"name": name, "kind": kind, "hex": payload.hex(), "reason": reason.value})
    shapes = [{"name": n, "shape": list(s)} for n, s in SHAPES.items()]
    for name, codec, entries, reason in _delta_cases():
        _expect(lambda c=codec, e=entries: decode_delta(e, c, SHAPES), reason, name)
        out.append(
            {
                "name": name,
                "kind": "delta",
                "codec": codec,
                "shapes": shapes,
                "entries_msgpack": _mp(entries).hex(),
                "reason": reason.value,
            }
        )
    for topic in (
        "fedmq/v1/demo/update/bad id",
        "fedmq/v1/demo/update/-x",
        "fedmq/v1/demo/agents/",
        "fedmq/v2/demo/model",
        "fedmq/v1/demo/model/chunk/²",
        "fedmq/v1/demo/model/chunk/٣",
        "fedmq/v1/demo/model/chunk/1234567",
        "fedmq/v1/demo/models",
        "fedmq/v1/demo/status/x",
        "fedmq/v1/de+mo/model",
    ):
        _expect(lambda t=topic: parse_topic(t), RejectReason.MALFORMED, topic)
        out.append(
            {"name": f"topic {topic}", "kind": "topic", "topic": topic, "reason": "malformed"}
        )
    return out + _chunk_cases() + _signed_cases()
