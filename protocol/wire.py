"""Bytes <-> the messages that carry tensors: model announcements, model deltas and updates
(msgpack).

Every ``decode_*`` function validates version, types, ranges and finiteness and
raises :class:`~protocol.errors.WireError` for bad input; any other exception
escaping a decoder is a bug. The small JSON messages are in :mod:`protocol.reports`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from protocol.chunks import MIN_MAX_PAYLOAD
from protocol.cohort_hash import decode_cohort_hash, encode_cohort_hash
from protocol.errors import RejectReason, WireError
from protocol.fields import (
    DEFAULT_MAX_BYTES,
    MAX_COHORT,
    MAX_ROLL_CALL,
    MAX_TENSORS,
    Fields,
    header,
    pack,
    unpack,
)
from protocol.messages import SCHEMA_VERSION, ModelAnnouncement, ModelDelta, TrainPlan, Update
from protocol.tensors import decode_weights, encode_weights

if TYPE_CHECKING:
    from protocol.cohort_hash import CohortHash
    from protocol.secagg.messages import SecAggConfig

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SECAGG_CODEC",
    "decode_model",
    "decode_model_delta",
    "decode_update",
    "encode_model",
    "encode_model_delta",
    "encode_update",
]

#: the codec a SecAgg round announces: an agent that does not know SecAgg declines it
SECAGG_CODEC = "secagg"


# --- model ---------------------------------------------------------------------


def _round_header(m: ModelAnnouncement | ModelDelta) -> dict[str, Any]:
    """The fields a model announcement and a model delta share, in wire order."""
    return {
        "job": m.job,
        "run": m.run,
        "round": m.round,
        "attempt": m.attempt,
        "model_id": m.model_id,
        "task": m.task,
        "plan": {
            "epochs": m.plan.epochs,
            "batch_size": m.plan.batch_size,
            "lr": m.plan.lr,
            "seed": m.plan.seed,
            "options": dict(m.plan.options),
        },
        "codec": m.codec,
        "deadline_s": m.deadline_s,
        "cohort": list(m.cohort) if m.cohort is not None else None,
        "done": m.done,
        "issued_at": m.issued_at,
        "max_payload": m.max_payload,
    }


def encode_model(m: ModelAnnouncement) -> bytes:
    delta = {} if m.delta_codec is None else {"delta_codec": m.delta_codec}
    return pack(
        {
            "v": SCHEMA_VERSION,
            "type": "model",
            **_round_header(m),
            **delta,  # written only when set: a run without deltas keeps its exact bytes
            "tensors": encode_weights(m.weights),
            **_round_tail(m),
        }
    )


def _round_tail(m: ModelAnnouncement | ModelDelta) -> dict[str, Any]:
    """The shared header fields written after the tensors, each only when set, so a plain
    synchronous announcement stays byte for byte: the buffered mode's ``max_staleness``,
    a SecAgg round's ``secagg``, the agents a roll call names (docs/PROTOCOL.md §16.2), a
    hashed round's ``cohort_hash`` (§17)."""
    tail: dict[str, Any] = {"max_staleness": m.max_staleness} if m.max_staleness else {}
    if m.roll_call:
        tail["roll_call"] = list(m.roll_call)
    if m.secagg is not None:
        from protocol.secagg.wire import encode_config

        tail["secagg"] = encode_config(m.secagg)
    if m.cohort_hash is not None:
        tail["cohort_hash"] = encode_cohort_hash(m.cohort_hash)
    return tail


def _decode_round_header(f: Fields, kind: str) -> dict[str, Any]:
    """The shared header fields, checked, as constructor arguments."""
    p = Fields(f.obj.get("plan"), f"{kind}.plan")
    plan = TrainPlan(
        epochs=p.integer("epochs", 0, 10_000),
        batch_size=p.integer("batch_size", 1, 1 << 20),
        lr=p.number("lr", 0.0, 1e6),
        seed=p.integer("seed", 0, 2**32 - 1),
        options=p.scalars("options"),
    )
    cohort = tuple(f.ident_list("cohort", MAX_COHORT)) if f.present("cohort") else None
    return {
        "job": f.ident("job"),
        "run": f.ident("run"),
        "round": f.integer("round", 1),
        "attempt": f.integer("attempt", 0, 1_000_000),
        "model_id": f.text("model_id", 64),
        "task": f.text("task"),
        "plan": plan,
        "codec": f.text("codec"),
        "deadline_s": f.number("deadline_s", 0.0, 1e7),
        "cohort": cohort,
        "done": f.flag("done"),
        "issued_at": f.number("issued_at", 0.0),
        "max_payload": _max_payload(f),
        "max_staleness": (
            f.integer("max_staleness", 0, 1_000_000) if f.present("max_staleness") else 0
        ),
        "secagg": _secagg(f, cohort, kind),
        "cohort_hash": _cohort_hash(f, cohort, kind),
        "roll_call": (
            tuple(f.ident_list("roll_call", MAX_ROLL_CALL)) if f.present("roll_call") else ()
        ),
    }


def _secagg(f: Fields, cohort: tuple[str, ...] | None, kind: str) -> SecAggConfig | None:
    """The ``secagg`` map: a SecAgg round names its cohort and uses the ``secagg`` codec."""
    if not f.present("secagg"):
        return None
    from protocol.secagg.wire import decode_config

    config = decode_config(f.obj["secagg"])
    if cohort is None:
        raise WireError(RejectReason.MALFORMED, f"{kind}: a secagg round must name its cohort")
    if f.obj.get("codec") != SECAGG_CODEC:
        detail = f"{kind}: a secagg round uses codec {SECAGG_CODEC!r}"
        raise WireError(RejectReason.BAD_CODEC, detail)
    return config


def _cohort_hash(f: Fields, cohort: tuple[str, ...] | None, kind: str) -> CohortHash | None:
    """The hashed cohort (docs/PROTOCOL.md §17): a round names its agents one way only."""
    if not f.present("cohort_hash"):
        return None
    if cohort is not None:
        raise WireError(RejectReason.MALFORMED, f"{kind}: cohort_hash with a named cohort")
    return decode_cohort_hash(f.obj["cohort_hash"], kind)


def _optional_text(f: Fields, key: str, max_len: int) -> str | None:
    return f.text(key, max_len) if f.present(key) else None


def decode_model(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ModelAnnouncement:
    """Parse and validate a model announcement.

    Raises:
        WireError: for anything malformed, of another version, or non-finite.
    """
    obj = unpack(payload, max_bytes, "model")
    f = header(obj, "model")
    round_header = _decode_round_header(f, "model")
    tensors = f.obj.get("tensors")
    if isinstance(tensors, list) and len(tensors) > MAX_TENSORS:
        raise WireError(RejectReason.TOO_LARGE, f"model: {len(tensors)} tensors")
    return ModelAnnouncement(
        **round_header,
        delta_codec=_optional_text(f, "delta_codec", 256),
        weights=decode_weights(tensors),
    )


# --- model delta (docs/PROTOCOL.md §15) ---------------------------------------------

#: the broadcast model's dtypes: float32, or float16 values widened
DELTA_DTYPES = ("<f4", "<f2")


def encode_model_delta(d: ModelDelta) -> bytes:
    return pack(
        {
            "v": SCHEMA_VERSION,
            "type": "delta",
            **_round_header(d),
            "base_id": d.base_id,
            "delta_codec": d.delta_codec,
            "dtype": d.dtype,
            "tensors": [dict(t) for t in d.tensors],
            **_round_tail(d),
        }
    )


def decode_model_delta(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ModelDelta:
    """Parse and validate a model delta or notice; the tensors stay codec-encoded (they
    are checked against the base's shapes when applied).

    Raises:
        WireError: for anything malformed, of another version, or non-finite.
    """
    obj = unpack(payload, max_bytes, "delta")
    f = header(obj, "delta")
    round_header = _decode_round_header(f, "delta")
    base_id = _optional_text(f, "base_id", 64)
    delta_codec = _optional_text(f, "delta_codec", 256)
    dtype = f.text("dtype", 8)
    if dtype not in DELTA_DTYPES:
        raise WireError(RejectReason.MALFORMED, f"delta.dtype {dtype!r} not in {DELTA_DTYPES}")
    tensors = obj.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        raise WireError(RejectReason.MALFORMED, "delta.tensors: expected a list")
    if not all(isinstance(t, Mapping) for t in tensors):
        raise WireError(RejectReason.MALFORMED, "delta.tensors: entries must be maps")
    if base_id is not None and (delta_codec is None or not tensors):
        raise WireError(RejectReason.MALFORMED, "delta: a base_id needs a delta_codec and tensors")
    if base_id is None and tensors:
        raise WireError(RejectReason.MALFORMED, "delta: a notice (no base_id) has no tensors")
    return ModelDelta(
        **round_header,
        base_id=base_id,
        delta_codec=delta_codec,
        dtype=dtype,
        tensors=tuple(tensors),
    )


def _max_payload(f: Fields) -> int:
    """0 (no cap) or a cap an agent can chunk for."""
    cap = f.integer("max_payload", 0, 2**31) if f.present("max_payload") else 0
    if 0 < cap < MIN_MAX_PAYLOAD:
        raise WireError(RejectReason.MALFORMED, f"model.max_payload={cap} < {MIN_MAX_PAYLOAD}")
    return cap


# --- update -----------------------------------------------------------------


def encode_update(u: Update) -> bytes:
    return pack(
        {
            "v": SCHEMA_VERSION,
            "type": "update",
            "job": u.job,
            "agent": u.agent,
            "round": u.round,
            "model_id": u.model_id,
            "samples": u.samples,
            "codec": u.codec,
            "metrics": dict(u.metrics),
            "train_s": u.train_s,
            "declined": u.declined,
            "tensors": [dict(t) for t in u.tensors],
        }
    )


def decode_update(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Update:
    """Parse and validate an update's envelope; the tensors stay codec-encoded.

    Raises:
        WireError: for anything malformed, of another version, or non-finite.
    """
    obj = unpack(payload, max_bytes, "update")
    f = header(obj, "update")
    declined = f.text("declined", 256) if f.present("declined") else None
    tensors = obj.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        raise WireError(RejectReason.MALFORMED, "update.tensors: expected a list")
    if not all(isinstance(t, Mapping) for t in tensors):
        raise WireError(RejectReason.MALFORMED, "update.tensors: entries must be maps")
    if declined is None and not tensors:
        raise WireError(RejectReason.MALFORMED, "update: no tensors and not a decline")
    if declined is not None and tensors:
        raise WireError(RejectReason.MALFORMED, "update: a decline carries no tensors")
    samples_range = (0, 0) if declined is not None else (1, 2**40)  # a decline trained on none
    return Update(
        job=f.ident("job"),
        agent=f.ident("agent"),
        round=f.integer("round", 1),
        model_id=f.text("model_id", 64),
        samples=f.integer("samples", *samples_range),
        codec=f.text("codec"),
        tensors=tuple(tensors),
        metrics=f.floats("metrics"),
        train_s=f.number("train_s", 0.0),
        declined=declined,
    )
