"""Whether a partial aggregate may enter the round: the one place these rules live.

A site aggregator or an ingest worker validates its agents' updates with
:class:`coordinator.validation.Intake`, exactly as the coordinator does, sums
them exactly and sends one :class:`~protocol.partial.PartialAggregate`. The
coordinator then checks the partial as it checks an update (the envelope, job,
run, round, base model), and its account: a sum over the model's size, a total
weight that the contributors' samples give, contributors that the round asked,
and none already counted, directly or through another aggregator, since a sum
cannot be taken apart again (:class:`CountedTwiceError` names them, so that the sender
can sum its batch again without them). One aggregator may send several partials a
round (an ingest worker sends batches); a partial sent twice is refused by the same
rule, since its contributors are then counted. Pure; every refusal is a
:class:`~protocol.WireError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from coordinator.aggregate import Mergeable, mergeable
from coordinator.config import RoundConfig
from coordinator.open_round import OpenRound
from coordinator.validation import RunView, check_asked
from protocol import RejectReason, WireError, check_agent_level
from protocol.keys import VerifyKey
from protocol.partial import PartialAggregate, Verdict, decode_partial
from protocol.signing import open_partial


class CountedTwiceError(WireError):
    """DUPLICATE: the partial names agents the round already counted (``agents``)."""

    def __init__(self, agents: tuple[str, ...], round_no: int) -> None:
        super().__init__(RejectReason.DUPLICATE,
                         f"{', '.join(agents[:5])} already counted in round {round_no}: the "
                         "partial would count them twice")
        self.agents = agents


def partial_keys(config: RoundConfig) -> Mapping[str, VerifyKey] | None:
    """The aggregators' keys; in the secure profile (agent keys set) never None, so an
    unsigned partial is refused even when no aggregator is provisioned."""
    if config.aggregator_keys is not None:
        return config.aggregator_keys
    return {} if config.agent_keys is not None else None


def admit_partial(
    config: RoundConfig, view: RunView, aggregator: str, payload: bytes, size: int
) -> tuple[PartialAggregate, Mergeable]:
    """The partial aggregate ``aggregator`` published as ``payload``, if the round may
    take it, and the round's aggregator to merge it into; ``size`` is the model's.

    Raises:
        WireError: with the reason the partial is refused.
    """
    body = open_partial(payload, job=config.job, run=view.run, aggregator=aggregator,
                        keys=partial_keys(config), max_body_bytes=config.max_partial_bytes)
    p = decode_partial(body, config.max_partial_bytes)
    if p.aggregator != aggregator:
        raise WireError(RejectReason.AGENT_MISMATCH, f"partial names {p.aggregator!r}")
    if p.job != config.job:
        raise WireError(RejectReason.WRONG_JOB, f"partial for job {p.job!r}")
    allowed = config.allowed_aggregators
    if allowed is not None and aggregator not in allowed:
        raise WireError(RejectReason.UNKNOWN_AGENT, f"aggregator {aggregator!r} not provisioned")
    if p.run != view.run:
        raise WireError(RejectReason.WRONG_RUN, f"partial for run {p.run!r}")
    rs = _round_taking(view, p)
    merger = mergeable(rs.aggregator)
    if config.secagg is not None:
        raise WireError(RejectReason.BAD_STATE, "a secure-aggregation round sums only masked "
                                                "inputs, no partial sums")
    if merger is None:
        raise WireError(RejectReason.BAD_STATE, f"aggregator {config.aggregator} cannot merge "
                                                "partial sums (it needs every update)")
    if p.total.size != size:
        raise WireError(RejectReason.BAD_STATE, f"a sum of {p.total.size} coordinates, "
                                                f"the model has {size}")
    _check_contributors(config, view, p, rs)
    weight = sum(merger.weight(c.samples) for c in p.contributors)
    if weight != p.total_weight:
        raise WireError(RejectReason.BAD_STATE, f"total weight {p.total_weight}, its "
                                                f"contributors give {weight}")
    return p, merger


def verdict(config: RoundConfig, view: RunView, aggregator: str, payload: bytes, *,
            round_no: int | None, refused: WireError | None = None) -> tuple[Verdict, ...]:
    """The answer to ``aggregator``'s partial ``payload`` (merged unless ``refused``), or
    none when the topic level names no aggregator a verdict topic can be built for."""
    try:
        check_agent_level(aggregator)
    except WireError:
        return ()
    return (Verdict(
        job=config.job, run=view.run, round=round_no or 0, aggregator=aggregator,
        partial=hashlib.sha256(payload).hexdigest(), merged=refused is None,
        reason=refused.reason.value if refused is not None else "",
        counted=refused.agents if isinstance(refused, CountedTwiceError) else (),
    ),)


def _round_taking(view: RunView, p: PartialAggregate) -> OpenRound:
    """The open round, if ``p`` is for it and was summed from its model.

    Raises:
        WireError: NO_ROUND, STALE, FUTURE_ROUND or BASE_MISMATCH.
    """
    rs = view.accepting
    if rs is None:
        if p.round <= view.completed or p.round == view.current:
            raise WireError(RejectReason.STALE, f"round {p.round} has closed")
        raise WireError(RejectReason.NO_ROUND, "no round is open")
    if p.round != rs.number:
        reason = RejectReason.STALE if p.round < rs.number else RejectReason.FUTURE_ROUND
        raise WireError(reason, f"partial for round {p.round}, the round is {rs.number}")
    if p.model_id != view.model_id:
        raise WireError(RejectReason.BASE_MISMATCH, f"summed from {p.model_id[:12]}")
    return rs


def _check_contributors(
    config: RoundConfig, view: RunView, p: PartialAggregate, rs: OpenRound
) -> None:
    """Every agent named must be one the round asked, and none counted already.

    Raises:
        WireError: UNKNOWN_AGENT or NOT_IN_COHORT; CountedTwiceError (DUPLICATE).
    """
    named = p.agents | set(p.declined)
    for agent in sorted(named):
        if config.allowed_agents is not None and agent not in config.allowed_agents:
            raise WireError(RejectReason.UNKNOWN_AGENT, f"contributor {agent!r} not provisioned")
        check_asked(config, view, agent, rs)
    counted = tuple(sorted(named & rs.answered))
    if counted:
        raise CountedTwiceError(counted, rs.number)
