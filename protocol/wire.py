"""Bytes <-> messages. Models and updates are msgpack; status, metrics and presence JSON.

Every ``decode_*`` function validates version, types, ranges and finiteness and
raises :class:`~protocol.errors.WireError` for bad input; any other exception
escaping a decoder is a bug. Unknown extra fields are ignored, so a newer peer
can add optional fields without breaking an older one (docs/PROTOCOL.md,
"Versioning").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgpack

from protocol.chunks import MIN_MAX_PAYLOAD
from protocol.errors import RejectReason, WireError
from protocol.messages import (
    SCHEMA_VERSION,
    ClosedBy,
    ModelAnnouncement,
    Phase,
    Presence,
    RoundMetrics,
    Scalar,
    Status,
    TrainPlan,
    Update,
)
from protocol.tensors import decode_weights, encode_weights
from protocol.topics import check_id

if TYPE_CHECKING:
    from protocol.secagg.messages import SecAggConfig

#: Refuse to parse payloads above this size unless the caller says otherwise.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_MAX_JSON_BYTES = 64 * 1024
_MAX_MAP_ITEMS = 64
_MAX_COHORT = 100_000
_MAX_TENSORS = 4096


class _Fields:
    """Typed, validating access to one decoded map."""

    def __init__(self, obj: Any, what: str) -> None:
        if not isinstance(obj, Mapping):
            raise WireError(RejectReason.MALFORMED, f"{what}: expected a map")
        self.obj, self.what = obj, what

    def _fail(self, key: str, expected: str) -> WireError:
        got = type(self.obj.get(key)).__name__
        detail = f"{self.what}.{key}: expected {expected}, got {got}"
        return WireError(RejectReason.MALFORMED, detail)

    def present(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def integer(self, key: str, lo: int = 0, hi: int = 2**53) -> int:
        v = self.obj.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise self._fail(key, "an integer")
        if not lo <= v <= hi:
            raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}={v} outside [{lo}, {hi}]")
        return v

    def number(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        v = self.obj.get(key)
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise self._fail(key, "a number")
        try:
            finite = math.isfinite(v)
        except OverflowError:  # a JSON integer beyond float range
            raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}: out of range") from None
        if not finite:
            raise WireError(RejectReason.NON_FINITE, f"{self.what}.{key} is not finite")
        if not lo <= v <= hi:
            raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}={v} outside [{lo}, {hi}]")
        return float(v)

    def text(self, key: str, max_len: int = 256) -> str:
        v = self.obj.get(key)
        if not isinstance(v, str) or len(v) > max_len:
            raise self._fail(key, f"a string of <= {max_len} chars")
        return v

    def flag(self, key: str) -> bool:
        v = self.obj.get(key)
        if not isinstance(v, bool):
            raise self._fail(key, "a boolean")
        return v

    def ident(self, key: str) -> str:
        try:
            return check_id(self.text(key, 64), key)
        except ValueError as exc:
            raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}: {exc}") from None

    def ident_list(self, key: str, limit: int = _MAX_COHORT) -> list[str]:
        v = self.obj.get(key)
        if not isinstance(v, list) or len(v) > limit:
            raise self._fail(key, f"a list of <= {limit} ids")
        return [_Fields({"a": a}, f"{self.what}.{key}").ident("a") for a in v]

    def mapping(self, key: str) -> Mapping[Any, Any]:
        v = self.obj.get(key, {})
        if not isinstance(v, Mapping) or len(v) > _MAX_MAP_ITEMS:
            raise self._fail(key, f"a map of <= {_MAX_MAP_ITEMS} items")
        return v

    def scalars(self, key: str) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {}
        for k, v in self.mapping(key).items():
            if not isinstance(k, str) or not isinstance(v, int | float | str | bool):
                raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}: bad entry {k!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise WireError(RejectReason.NON_FINITE, f"{self.what}.{key}.{k} is not finite")
            out[k] = v
        return out

    def floats(self, key: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, v in self.scalars(key).items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}.{k}: not a number")
            out[k] = float(v)
        return out

    def counts(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for k, v in self.scalars(key).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}.{k}: not a count")
            out[k] = v
        return out


def _header(obj: Any, kind: str) -> _Fields:
    f = _Fields(obj, kind)
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != SCHEMA_VERSION:
        raise WireError(RejectReason.BAD_VERSION, f"{kind}: schema version {version!r}, want 1")
    if obj.get("type") != kind:
        raise WireError(RejectReason.MALFORMED, f"expected type {kind!r}, got {obj.get('type')!r}")
    return f


def _unpack(payload: bytes, max_bytes: int, kind: str) -> Any:
    if len(payload) > max_bytes:
        raise WireError(RejectReason.TOO_LARGE, f"{kind}: {len(payload)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(RejectReason.MALFORMED, f"{kind}: not msgpack ({exc})") from None


def _pack(obj: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def _json_load(payload: bytes, kind: str) -> Any:
    if len(payload) > _MAX_JSON_BYTES:
        raise WireError(RejectReason.TOO_LARGE, f"{kind}: {len(payload)} bytes")
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(RejectReason.MALFORMED, f"{kind}: not JSON ({exc})") from None


def _json_dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


# --- model ------------------------------------------------------------------


#: the codec a SecAgg round announces: an agent that does not know SecAgg declines it
SECAGG_CODEC = "secagg"


def encode_model(m: ModelAnnouncement) -> bytes:
    doc = _model_doc(m)
    if m.secagg is not None:  # written only then: plain announcements stay byte for byte
        from protocol.secagg.wire import encode_config

        doc["secagg"] = encode_config(m.secagg)
    return _pack(doc)


def _model_doc(m: ModelAnnouncement) -> dict[str, Any]:
    return (
        {
            "v": SCHEMA_VERSION,
            "type": "model",
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
            "tensors": encode_weights(m.weights),
        }
    )


def decode_model(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ModelAnnouncement:
    """Parse and validate a model announcement.

    Raises:
        WireError: for anything malformed, of another version, or non-finite.
    """
    obj = _unpack(payload, max_bytes, "model")
    f = _header(obj, "model")
    p = _Fields(f.obj.get("plan"), "model.plan")
    plan = TrainPlan(
        epochs=p.integer("epochs", 0, 10_000),
        batch_size=p.integer("batch_size", 1, 1 << 20),
        lr=p.number("lr", 0.0, 1e6),
        seed=p.integer("seed", 0, 2**32 - 1),
        options=p.scalars("options"),
    )
    cohort_raw = f.obj.get("cohort")
    cohort: tuple[str, ...] | None = None
    if cohort_raw is not None:
        cohort = tuple(f.ident_list("cohort"))
    tensors = f.obj.get("tensors")
    if isinstance(tensors, list) and len(tensors) > _MAX_TENSORS:
        raise WireError(RejectReason.TOO_LARGE, f"model: {len(tensors)} tensors")
    secagg = _secagg(f, cohort)
    return ModelAnnouncement(
        job=f.ident("job"),
        run=f.ident("run"),
        round=f.integer("round", 1),
        attempt=f.integer("attempt", 0, 1_000_000),
        model_id=f.text("model_id", 64),
        task=f.text("task"),
        plan=plan,
        codec=f.text("codec"),
        deadline_s=f.number("deadline_s", 0.0, 1e7),
        cohort=cohort,
        done=f.flag("done"),
        issued_at=f.number("issued_at", 0.0),
        max_payload=_max_payload(f),
        weights=decode_weights(tensors),
        secagg=secagg,
    )


def _secagg(f: _Fields, cohort: tuple[str, ...] | None) -> SecAggConfig | None:
    """The ``secagg`` map: a SecAgg round names its cohort and uses the ``secagg`` codec."""
    if not f.present("secagg"):
        return None
    from protocol.secagg.wire import decode_config

    config = decode_config(f.obj["secagg"])
    if cohort is None:
        raise WireError(RejectReason.MALFORMED, "model: a secagg round must name its cohort")
    if f.obj.get("codec") != SECAGG_CODEC:
        detail = f"model: a secagg round uses codec {SECAGG_CODEC!r}"
        raise WireError(RejectReason.BAD_CODEC, detail)
    return config


def _max_payload(f: _Fields) -> int:
    """0 (no cap) or a cap an agent can chunk for."""
    cap = f.integer("max_payload", 0, 2**31) if f.present("max_payload") else 0
    if 0 < cap < MIN_MAX_PAYLOAD:
        raise WireError(RejectReason.MALFORMED, f"model.max_payload={cap} < {MIN_MAX_PAYLOAD}")
    return cap


# --- update -----------------------------------------------------------------


def encode_update(u: Update) -> bytes:
    return _pack(
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
    obj = _unpack(payload, max_bytes, "update")
    f = _header(obj, "update")
    declined = f.text("declined", 256) if f.present("declined") else None
    tensors = obj.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > _MAX_TENSORS:
        raise WireError(RejectReason.MALFORMED, "update.tensors: expected a list")
    if not all(isinstance(t, Mapping) for t in tensors):
        raise WireError(RejectReason.MALFORMED, "update.tensors: entries must be maps")
    if declined is None and not tensors:
        raise WireError(RejectReason.MALFORMED, "update: no tensors and not a decline")
    return Update(
        job=f.ident("job"),
        agent=f.ident("agent"),
        round=f.integer("round", 1),
        model_id=f.text("model_id", 64),
        samples=f.integer("samples", 0 if declined is not None else 1, 2**40),
        codec=f.text("codec"),
        tensors=tuple(tensors),
        metrics=f.floats("metrics"),
        train_s=f.number("train_s", 0.0),
        declined=declined,
    )


# --- presence ----------------------------------------------------------------


def encode_presence(p: Presence) -> bytes:
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "type": "presence",
        "agent": p.agent,
        "state": "online" if p.online else "offline",
        "at": p.at,
    }
    for key in ("samples", "device", "trainer"):
        if getattr(p, key) is not None:
            doc[key] = getattr(p, key)
    return _json_dump(doc)


def decode_presence(payload: bytes) -> Presence:
    """Parse a presence document.

    Raises:
        WireError: for anything malformed or of another version.
    """
    obj = _json_load(payload, "presence")
    f = _header(obj, "presence")
    state = f.text("state", 16)
    if state not in ("online", "offline"):
        raise WireError(RejectReason.MALFORMED, f"presence.state: {state!r}")
    return Presence(
        agent=f.ident("agent"),
        online=state == "online",
        samples=f.integer("samples", 0, 2**40) if f.present("samples") else None,
        device=f.text("device", 64) if f.present("device") else None,
        trainer=f.text("trainer", 64) if f.present("trainer") else None,
        at=f.number("at", 0.0) if f.present("at") else 0.0,
    )


# --- status -------------------------------------------------------------------


def encode_status(s: Status) -> bytes:
    return _json_dump(
        {
            "v": SCHEMA_VERSION,
            "type": "status",
            "job": s.job,
            "run": s.run,
            "phase": s.phase.value,
            "round": s.round,
            "rounds": s.rounds,
            "attempt": s.attempt,
            "accepted": s.accepted,
            "quorum": s.quorum,
            "min_replies": s.min_replies,
            "cohort_size": s.cohort_size,
            "agents_online": s.agents_online,
            "deadline_at": s.deadline_at,
            "rejected": dict(s.rejected),
            "at": s.at,
            "message": s.message,
        }
    )


def decode_status(payload: bytes) -> Status:
    """Parse a status document.

    Raises:
        WireError: for anything malformed or of another version.
    """
    obj = _json_load(payload, "status")
    f = _header(obj, "status")
    try:
        phase = Phase(f.text("phase", 16))
    except ValueError:
        raise WireError(RejectReason.MALFORMED, f"status.phase: {obj.get('phase')!r}") from None
    return Status(
        job=f.ident("job"),
        run=f.ident("run"),
        phase=phase,
        round=f.integer("round"),
        rounds=f.integer("rounds"),
        attempt=f.integer("attempt"),
        accepted=f.integer("accepted"),
        quorum=f.integer("quorum"),
        min_replies=f.integer("min_replies"),
        cohort_size=f.integer("cohort_size"),
        agents_online=f.integer("agents_online"),
        deadline_at=f.number("deadline_at", 0.0) if f.present("deadline_at") else None,
        rejected=f.counts("rejected"),
        at=f.number("at", 0.0),
        message=f.text("message", 1024) if f.present("message") else "",
    )


# --- metrics ------------------------------------------------------------------

_OPTIONAL_METRICS = ("accuracy", "loss", "train_loss", "train_accuracy")


def encode_metrics(m: RoundMetrics) -> bytes:
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "type": "metrics",
        "job": m.job,
        "run": m.run,
        "round": m.round,
        "closed_by": m.closed_by.value,
        "accepted": m.accepted,
        "declined": m.declined,
        "rejected": dict(m.rejected),
        "samples": m.samples,
        "duration_s": m.duration_s,
        "bytes_up": m.bytes_up,
        "bytes_down": m.bytes_down,
        "raw_bytes_up": m.raw_bytes_up,
        "at": m.at,
    }
    for key in _OPTIONAL_METRICS:
        doc[key] = getattr(m, key)
    if m.epsilon is not None:  # only DP runs have one; other documents stay as they were
        doc["epsilon"] = m.epsilon
    if m.secagg is not None:  # likewise only SecAgg runs
        doc["secagg"] = {phase: list(agents) for phase, agents in m.secagg.items()}
    return _json_dump(doc)


def decode_metrics(payload: bytes) -> RoundMetrics:
    """Parse a per-round metrics document.

    Raises:
        WireError: for anything malformed, of another version, or non-finite.
    """
    obj = _json_load(payload, "metrics")
    f = _header(obj, "metrics")
    try:
        closed_by = ClosedBy(f.text("closed_by", 16))
    except ValueError:
        raise WireError(RejectReason.MALFORMED, "metrics.closed_by: unknown value") from None
    optional = {k: f.number(k) if f.present(k) else None for k in _OPTIONAL_METRICS}
    return RoundMetrics(
        job=f.ident("job"),
        run=f.ident("run"),
        round=f.integer("round", 1),
        closed_by=closed_by,
        accepted=f.integer("accepted"),
        declined=f.integer("declined"),
        rejected=f.counts("rejected"),
        samples=f.integer("samples"),
        duration_s=f.number("duration_s", 0.0),
        bytes_up=f.integer("bytes_up"),
        bytes_down=f.integer("bytes_down"),
        raw_bytes_up=f.integer("raw_bytes_up"),
        at=f.number("at", 0.0),
        epsilon=f.number("epsilon", 0.0) if f.present("epsilon") else None,
        secagg=_dropouts(f) if f.present("secagg") else None,
        **optional,
    )


_SECAGG_PHASES = ("keys", "shares", "masked", "unmask")


def _dropouts(f: _Fields) -> dict[str, tuple[str, ...]]:
    """metrics.secagg: phase -> the agents that dropped out in it."""
    out: dict[str, tuple[str, ...]] = {}
    for phase, agents in f.mapping("secagg").items():
        if phase not in _SECAGG_PHASES or not isinstance(agents, list):
            raise WireError(RejectReason.MALFORMED, f"metrics.secagg: bad entry {phase!r}")
        ids = _Fields({"a": agents}, "metrics.secagg")
        out[phase] = tuple(ids.ident_list("a"))
    return out
