"""The partial aggregate: a site aggregator's or an ingest worker's share of one round.

It carries the exact sum of the deltas it accepted (:mod:`protocol.sumstate`), their
total weight, who contributed (id, samples, the SHA-256 of the update exactly as
received, so the coordinator or an auditor can match it to the agent's signed
bytes) and what it refused and why. On ``fedmq/v1/{job}/partial/{aggregator}``, QoS 1;
in the secure profile sealed by the aggregator's key (``Purpose.PARTIAL``). The
coordinator answers each with a :class:`Verdict` on ``verdict/{aggregator}``: merged,
or refused, naming the agents another aggregator already counted so that an ingest
worker can send its batch again without them. docs/PROTOCOL.md §4.7 and §4.8.

This module checks the message on its own (types, sizes, a canonical sum, counts
that agree); whether the round may take it is the coordinator's business
(:mod:`coordinator.partials`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.errors import RejectReason, WireError
from protocol.fields import MAX_COHORT, Fields, header, pack, unpack
from protocol.messages import SCHEMA_VERSION
from protocol.sumstate import SumState, decode_state

#: the longest rejection detail carried; longer ones are cut
MAX_DETAIL = 200
_DIGEST_CHARS = 64
#: a verdict names at most MAX_COHORT agents of 64 characters
MAX_VERDICT_BYTES = 80 * MAX_COHORT + 1024


@dataclass(frozen=True, slots=True)
class Contributor:
    """One accepted update inside a partial aggregate."""

    agent: str
    samples: int
    #: SHA-256 (hex) of the update payload as the aggregator received it
    digest: str
    #: the agent's reported training metrics (loss, accuracy), for the round's metrics
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message the aggregator refused, with its reason."""

    agent: str | None
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True, eq=False)
class PartialAggregate:
    """The exact sum of a set of accepted deltas for one round, and its account."""

    job: str
    run: str
    round: int
    model_id: str
    #: the site aggregator's or ingest worker's id (its topic level and signer)
    aggregator: str
    total: SumState
    #: sum of the contributors' weights as the round's aggregator weighs them
    total_weight: int
    contributors: tuple[Contributor, ...]
    declined: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    #: update bytes the aggregator received this round (what stayed off the central uplink)
    bytes_in: int = 0

    @property
    def agents(self) -> frozenset[str]:
        return frozenset(c.agent for c in self.contributors)

    @property
    def samples(self) -> int:
        return sum(c.samples for c in self.contributors)


def encode_partial(p: PartialAggregate) -> bytes:
    return pack(
        {
            "v": SCHEMA_VERSION,
            "type": "partial",
            "job": p.job,
            "run": p.run,
            "round": p.round,
            "model_id": p.model_id,
            "aggregator": p.aggregator,
            "sum": {"low": p.total.low, "rows": int(p.total.digits.shape[0]),
                    "size": p.total.size, "digits": p.total.to_bytes()},
            "total_weight": p.total_weight,
            "contributors": [
                {"agent": c.agent, "samples": c.samples, "digest": c.digest,
                 "metrics": dict(c.metrics)}
                for c in p.contributors
            ],
            "declined": list(p.declined),
            "rejected": [
                {"agent": r.agent, "reason": r.reason.value, "detail": r.detail[:MAX_DETAIL]}
                for r in p.rejected
            ],
            "bytes_in": p.bytes_in,
        }
    )


def decode_partial(payload: bytes, max_bytes: int) -> PartialAggregate:
    """Parse and check a partial aggregate on its own.

    Raises:
        WireError: MALFORMED, BAD_VERSION, TOO_LARGE or NON_FINITE for a bad message;
            BAD_STATE for a sum out of range or not canonical; DUPLICATE for an agent
            listed twice (it would be counted twice).
    """
    obj = unpack(payload, max_bytes, "partial")
    f = header(obj, "partial")
    s = Fields(obj.get("sum"), "partial.sum")
    digits = s.obj.get("digits")
    if not isinstance(digits, bytes):
        raise WireError(RejectReason.MALFORMED, "partial.sum.digits: expected binary")
    total = decode_state(s.integer("low", -64, 64), s.integer("rows", 0, 64),
                         s.integer("size", 0, 2**40), digits)
    contributors = tuple(_contributor(c) for c in _items(obj, "contributors"))
    agents = [c.agent for c in contributors]
    if len(set(agents)) != len(agents):
        raise WireError(RejectReason.DUPLICATE, "partial lists an agent twice")
    declined = tuple(_ident(d, "partial.declined") for d in _items(obj, "declined"))
    if set(declined) & set(agents) or len(set(declined)) != len(declined):
        raise WireError(RejectReason.DUPLICATE, "partial lists an agent twice")
    rejected = tuple(_rejection(r) for r in _items(obj, "rejected"))
    partial = PartialAggregate(
        job=f.ident("job"),
        run=f.ident("run"),
        round=f.integer("round", 1),
        model_id=f.text("model_id", 128),
        aggregator=f.ident("aggregator"),
        total=total,
        total_weight=f.integer("total_weight", 0, 2**63 - 1),
        contributors=contributors,
        declined=declined,
        rejected=rejected,
        bytes_in=f.integer("bytes_in", 0, 2**63 - 1),
    )
    if (partial.total_weight == 0) != (not contributors):
        raise WireError(RejectReason.BAD_STATE, "a total weight without contributors, or none")
    if not contributors and total.digits.shape[0]:
        raise WireError(RejectReason.BAD_STATE, "a nonzero sum without contributors")
    return partial


def _items(obj: Any, key: str, kind: str = "partial") -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_COHORT:
        raise WireError(RejectReason.MALFORMED, f"{kind}.{key}: expected a list")
    return value


def _ident(value: Any, what: str) -> str:
    return Fields({"id": value}, what).ident("id")


def _contributor(obj: Any) -> Contributor:
    f = Fields(obj, "partial.contributor")
    digest = _digest(f.text("digest", _DIGEST_CHARS))
    return Contributor(f.ident("agent"), f.integer("samples", 1), digest, f.floats("metrics"))


def _rejection(obj: Any) -> Rejection:
    f = Fields(obj, "partial.rejected")
    agent = f.ident("agent") if f.present("agent") else None
    try:
        reason = RejectReason(f.text("reason", 32))
    except ValueError:
        raise WireError(RejectReason.MALFORMED, "partial.rejected.reason: unknown") from None
    return Rejection(agent, reason, f.text("detail", MAX_DETAIL))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The coordinator's answer to one partial aggregate, named by the SHA-256 of its
    payload as received."""

    job: str
    run: str
    #: the round the coordinator had open (0: none)
    round: int
    aggregator: str
    partial: str
    merged: bool
    #: why it was refused ("" when merged)
    reason: str = ""
    #: refused as ``duplicate``: the contributors and declines already counted
    counted: tuple[str, ...] = ()


def encode_verdict(v: Verdict) -> bytes:
    return pack({"v": SCHEMA_VERSION, "type": "verdict", "job": v.job, "run": v.run,
                 "round": v.round, "aggregator": v.aggregator, "partial": v.partial,
                 "merged": v.merged, "reason": v.reason, "counted": list(v.counted)})


def decode_verdict(payload: bytes) -> Verdict:
    """Parse and check a verdict.

    Raises:
        WireError: MALFORMED, BAD_VERSION or TOO_LARGE.
    """
    obj = unpack(payload, MAX_VERDICT_BYTES, "verdict")
    f = header(obj, "verdict")
    merged = obj.get("merged")
    if not isinstance(merged, bool):
        raise WireError(RejectReason.MALFORMED, "verdict.merged: expected a boolean")
    reason = f.text("reason", 32)
    if merged == bool(reason):
        raise WireError(RejectReason.MALFORMED, "verdict: a reason exactly when refused")
    return Verdict(
        job=f.ident("job"), run=f.ident("run"), round=f.integer("round", 0),
        aggregator=f.ident("aggregator"), partial=_digest(f.text("partial", _DIGEST_CHARS)),
        merged=merged, reason=reason,
        counted=tuple(_ident(a, "verdict.counted") for a in _items(obj, "counted", "verdict")),
    )


def _digest(value: str) -> str:
    if len(value) != _DIGEST_CHARS or any(ch not in "0123456789abcdef" for ch in value):
        raise WireError(RejectReason.MALFORMED, "digest: not SHA-256 hex")
    return value
