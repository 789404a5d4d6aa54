"""Whether an update may enter the round, and what it brings: the one place these rules live.

:func:`authentic_update` makes every check that does not depend on rounds and
:func:`check_round` the round rules; :class:`Intake` adds chunk reassembly before
them and decoding the delta after them. The round
machine feeds every update through an :class:`Intake`, and so does anything else
that must accept exactly what the coordinator accepts. Pure; every refusal is a
:class:`~protocol.WireError` with its reason.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass

from coordinator.config import RoundConfig
from coordinator.open_round import OpenRound
from protocol import (
    RejectReason,
    Update,
    Weights,
    WireError,
    check_agent_level,
    decode_delta,
    decode_update,
)
from protocol.chunks import Reassembler, is_chunk_frame
from protocol.cohort_hash import CohortHash, in_cohort
from protocol.compress import Shapes
from protocol.signing import open_update


@dataclass(frozen=True, slots=True)
class RunView:
    """What validation needs to know of the run when an update arrives."""

    run: str
    #: rounds completed so far
    completed: int
    #: the round announced last, None once the run has ended
    current: int | None
    #: the round accepting updates, None while none is (waiting, evaluating, ended)
    accepting: OpenRound | None
    #: the model id agents must have trained from
    model_id: str
    online: Set[str]
    #: the hashed cohort the round announced (docs/PROTOCOL.md §17), for an aggregator that
    #: follows the coordinator's announcement (the coordinator's own is its config's)
    cohort_hash: CohortHash | None = None


def authentic_update(config: RoundConfig, run: str, agent: str, payload: bytes) -> Update:
    """``payload`` decoded, if it is within size, signed as required, and ``agent``'s for
    this job: every check that does not depend on rounds (shared with the buffered mode).

    Raises:
        WireError: with the reason the update is refused.
    """
    if len(payload) > config.max_update_bytes:
        raise WireError(
            RejectReason.TOO_LARGE, f"{len(payload)} bytes > {config.max_update_bytes}"
        )
    # Verify the bytes as received, then decode what they vouch for (docs/SECURITY.md).
    body = open_update(
        payload,
        job=config.job,
        run=run,
        agent=agent,
        keys=config.agent_keys,
        max_body_bytes=config.max_update_bytes,
    )
    update = decode_update(body, config.max_update_bytes)
    if update.agent != agent:
        raise WireError(RejectReason.AGENT_MISMATCH, f"payload names {update.agent!r}")
    if update.job != config.job:
        raise WireError(RejectReason.WRONG_JOB, f"update for job {update.job!r}")
    if update.samples > config.max_samples:
        detail = f"{update.samples} samples > max_samples {config.max_samples}"
        raise WireError(RejectReason.TOO_LARGE, detail)
    if config.allowed_agents is not None and agent not in config.allowed_agents:
        raise WireError(RejectReason.UNKNOWN_AGENT, f"{agent!r} is not provisioned")
    return update


def check_codec(config: RoundConfig, update: Update) -> None:
    """Refuse a delta encoded with another codec than the job's.

    Raises:
        WireError: BAD_CODEC.
    """
    if update.declined is None and update.codec != config.codec:
        detail = f"codec {update.codec!r}, the round uses {config.codec!r}"
        raise WireError(RejectReason.BAD_CODEC, detail)


def check_round(config: RoundConfig, view: RunView, agent: str, update: Update) -> None:
    rs = view.accepting
    if rs is None:
        if update.round <= view.completed or update.round == view.current:
            raise WireError(RejectReason.STALE, f"round {update.round} has closed")
        raise WireError(RejectReason.NO_ROUND, "no round is open")
    if update.round < rs.number:
        raise WireError(RejectReason.STALE, f"round {update.round} < current {rs.number}")
    if update.round > rs.number:
        raise WireError(RejectReason.FUTURE_ROUND, f"round {update.round} > {rs.number}")
    if agent in rs.accepted or agent in rs.declined:
        raise WireError(RejectReason.DUPLICATE, f"{agent} already answered round {rs.number}")
    if update.model_id != view.model_id:
        raise WireError(RejectReason.BASE_MISMATCH, f"trained from {update.model_id[:12]}")
    check_asked(config, view, agent, rs)
    check_codec(config, update)


def check_asked(config: RoundConfig, view: RunView, agent: str, rs: OpenRound) -> None:
    """Refuse an agent the round did not ask: never seen online, or not in its cohort (for a
    hashed round: failing its hash, docs/PROTOCOL.md §17). With agent keys the update's
    verified signature already proves who sent it, so a provisioned agent is a member
    whatever its presence says (docs/SECURITY.md).

    Raises:
        WireError: UNKNOWN_AGENT or NOT_IN_COHORT.
    """
    rule = config.cohort_hash or view.cohort_hash
    if rule is not None and not in_cohort(rule, config.job, view.run, rs.number, agent):
        raise WireError(RejectReason.NOT_IN_COHORT, f"{agent!r} fails round {rs.number}'s hash")
    if agent in rs.cohort:
        return
    if agent not in view.online and config.agent_keys is None:
        raise WireError(RejectReason.UNKNOWN_AGENT, f"{agent!r} never announced presence")
    if config.names_cohort:
        raise WireError(RejectReason.NOT_IN_COHORT, f"{agent!r} was not asked in {rs.number}")


class Intake:
    """An agent's raw publishes in, admitted updates out; partial chunked updates held here."""

    def __init__(self, config: RoundConfig, shapes: Shapes) -> None:
        self._config = config
        self._shapes = shapes
        self._chunks = Reassembler(
            config.max_reassembly_bytes,
            ttl_s=max(2 * config.deadline_s, 60.0),
            max_payload_size=config.max_update_bytes,
        )

    def take(
        self, view: RunView, agent: str, payload: bytes, now: float
    ) -> tuple[Update, Weights | None] | None:
        """The admitted update and its decoded delta (None for a decline), or None while
        ``payload`` is one frame of a chunked update still incomplete.

        Raises:
            WireError: with the reason the update (or the chunk) is refused.
        """
        return self.take_checked(
            view.run, agent, payload, now,
            lambda update: check_round(self._config, view, agent, update),
        )

    def take_checked(
        self, run: str, agent: str, payload: bytes, now: float, check: Callable[[Update], None]
    ) -> tuple[Update, Weights | None] | None:
        """As :meth:`take`, with ``check`` (raising :class:`~protocol.WireError`) in place of
        the round rules, after every rule that does not depend on rounds.

        Raises:
            WireError: with the reason the update (or the chunk) is refused.
        """
        check_agent_level(agent)
        if is_chunk_frame(payload):
            try:
                whole = self._chunks.add(agent, payload, now)
            except WireError as exc:
                raise WireError(exc.reason, f"chunk: {exc.detail}") from None
            if whole is None:
                return None
            payload = whole
        update = authentic_update(self._config, run, agent, payload)
        check(update)
        if update.declined is not None:
            return update, None
        return update, decode_delta(update.tensors, update.codec, self._shapes)
