"""Bytes <-> the small JSON messages: presence, status and per-round metrics.

JSON so that anyone with ``mosquitto_sub`` can read them. Every ``decode_*``
validates like :mod:`protocol.wire`'s and raises only :class:`~protocol.errors.WireError`.
"""

from __future__ import annotations

from typing import Any

from protocol.errors import RejectReason, WireError
from protocol.fields import Fields, header, json_dump, json_load
from protocol.messages import (
    SCHEMA_VERSION,
    ClosedBy,
    Phase,
    Presence,
    RollCall,
    RoundMetrics,
    Status,
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
    for key in ("samples", "device", "trainer", "kind"):
        if getattr(p, key) is not None:
            doc[key] = getattr(p, key)
    if p.deltas:  # written only when true: other agents' presence is unchanged
        doc["deltas"] = True
    return json_dump(doc)


def decode_presence(payload: bytes) -> Presence:
    """Parse a presence document.

    Raises:
        WireError: for anything malformed or of another version.
    """
    obj = json_load(payload, "presence")
    f = header(obj, "presence")
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
        kind=f.text("kind", 64) if f.present("kind") else None,
        deltas=f.flag("deltas") if f.present("deltas") else False,
    )


# --- roll call (docs/PROTOCOL.md §16.5) ---------------------------------------


def encode_rollcall(r: RollCall) -> bytes:
    return json_dump({"v": SCHEMA_VERSION, "type": "rollcall", "job": r.job, "run": r.run,
                      "at": r.at})


def decode_rollcall(payload: bytes) -> RollCall:
    """Parse a roll call.

    Raises:
        WireError: for anything malformed or of another version.
    """
    f = header(json_load(payload, "rollcall"), "rollcall")
    return RollCall(job=f.ident("job"), run=f.ident("run"), at=f.number("at", 0.0))


# --- status -------------------------------------------------------------------


def encode_status(s: Status) -> bytes:
    return json_dump(
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
        } | ({} if s.mode == "sync" else {"mode": s.mode})  # sync documents are unchanged
    )


def decode_status(payload: bytes) -> Status:
    """Parse a status document.

    Raises:
        WireError: for anything malformed or of another version.
    """
    obj = json_load(payload, "status")
    f = header(obj, "status")
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
        mode=_mode(f) if f.present("mode") else "sync",
    )


#: the coordinator's modes a status may name
MODES = ("sync", "fedbuff")


def _mode(f: Fields) -> str:
    mode = f.text("mode", 16)
    if mode not in MODES:
        raise WireError(RejectReason.MALFORMED, f"status.mode: {mode!r}")
    return mode


# --- metrics ------------------------------------------------------------------

_OPTIONAL_METRICS = ("accuracy", "loss", "train_loss", "train_accuracy")
_DOWNLINK_COUNTS = ("raw_bytes_down", "addressed")


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
    for key in _DOWNLINK_COUNTS:  # docs/PROTOCOL.md §15.6; written when counted
        if getattr(m, key) is not None:
            doc[key] = getattr(m, key)
    if m.secagg is not None:  # likewise only SecAgg runs
        doc["secagg"] = {phase: list(agents) for phase, agents in m.secagg.items()}
    if m.staleness is not None:  # FedBuff and --carry-late only
        doc["staleness"] = dict(m.staleness)
    return json_dump(doc)


def decode_metrics(payload: bytes) -> RoundMetrics:
    """Parse a per-round metrics document.

    Raises:
        WireError: for anything malformed, of another version, or non-finite.
    """
    obj = json_load(payload, "metrics")
    f = header(obj, "metrics")
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
        raw_bytes_down=_count(f, "raw_bytes_down"),
        addressed=_count(f, "addressed"),
        secagg=_dropouts(f) if f.present("secagg") else None,
        staleness=_staleness(f) if f.present("staleness") else None,
        **optional,
    )


def _count(f: Fields, key: str) -> int | None:
    return f.integer(key) if f.present(key) else None


def _staleness(f: Fields) -> dict[str, int]:
    """metrics.staleness: tau (a decimal count) -> updates applied with that staleness."""
    counts = f.counts("staleness")
    if not all(tau.isdigit() and len(tau) <= 6 for tau in counts):
        raise WireError(RejectReason.MALFORMED, "metrics.staleness: keys must be counts")
    return counts


_SECAGG_PHASES = ("keys", "shares", "masked", "unmask")


def _dropouts(f: Fields) -> dict[str, tuple[str, ...]]:
    """metrics.secagg: phase -> the agents that dropped out in it (docs/PROTOCOL.md §14.8)."""
    out: dict[str, tuple[str, ...]] = {}
    for phase, agents in f.mapping("secagg").items():
        if phase not in _SECAGG_PHASES or not isinstance(agents, list):
            raise WireError(RejectReason.MALFORMED, f"metrics.secagg: bad entry {phase!r}")
        out[phase] = tuple(Fields({"a": agents}, "metrics.secagg").ident_list("a"))
    return out
