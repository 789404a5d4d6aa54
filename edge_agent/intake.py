"""Whether a model announcement may be taken: reassembled, verified, decoded, plausible.

The agent's counterpart of :mod:`coordinator.validation`: raw bytes from the
``model`` topics in, a model the agent may act on out, every refusal a
:class:`~protocol.WireError` with its reason. Pure: ``now`` is passed in.

Without the coordinator's key anyone who can publish to the broker can forge a
model, and a forged far-future round would make every genuine announcement
look late, freezing the fleet. The cheap check that limits this: an agent that
has stayed connected and lost nothing sees every announcement, so a run moves
on by at most one round, and a new run starts at round 1. After a (re)connect
or a loss the retained model may be any round, so the first model then is
taken as it is. Signed models are the coordinator's by proof and skip the check
(docs/SECURITY.md, "The unsigned profile").
"""

from __future__ import annotations

from protocol import ModelAnnouncement, RejectReason, WireError, decode_model
from protocol.chunks import Reassembler, is_chunk_frame
from protocol.fields import DEFAULT_MAX_BYTES
from protocol.signing import VerifyKey, open_model

#: incomplete chunked models older than this are dropped (a round's model is re-sent anyway)
MODEL_CHUNK_TTL_S = 600.0


class ModelIntake:
    """One agent's model topics in, acceptable announcements out; partial chunk sets held."""

    def __init__(self, job: str, coordinator_key: VerifyKey | None) -> None:
        self._job = job
        self._key = coordinator_key
        self._chunks = Reassembler(
            2 * DEFAULT_MAX_BYTES, ttl_s=MODEL_CHUNK_TTL_S, max_payload_size=DEFAULT_MAX_BYTES
        )
        #: nothing taken since (re)connecting or losing messages: any round may come next
        self._may_jump = True

    def resync(self) -> None:
        """The agent (re)connected or lost messages: the next model may be any round."""
        self._may_jump = True

    def take(
        self, payload: bytes, now: float, latest: ModelAnnouncement | None
    ) -> ModelAnnouncement | None:
        """The announcement in ``payload`` (None while it is one chunk of an incomplete
        set), given the newest model the agent holds.

        Raises:
            WireError: with the reason the model (or the chunk) is refused.
        """
        if is_chunk_frame(payload):  # a piece of a model sent in chunks (or its manifest)
            whole = self._chunks.add("model", payload, now)
            if whole is None:
                return None
            payload = whole
        # Verify the bytes as received, then decode what they vouch for.
        body = open_model(payload, job=self._job, key=self._key, max_body_bytes=DEFAULT_MAX_BYTES)
        model = decode_model(body)
        if model.job != self._job:
            raise WireError(RejectReason.WRONG_JOB, f"model for job {model.job!r}")
        self._check_plausible(model, latest)
        return model

    def taken(self) -> None:
        """The agent adopted the model it was given: later ones must follow from it."""
        self._may_jump = False

    def _check_plausible(self, model: ModelAnnouncement, latest: ModelAnnouncement | None) -> None:
        """Raises WireError(FUTURE_ROUND) for an unsigned model that cannot be the next one."""
        if self._key is not None or self._may_jump or latest is None:
            return
        if model.round <= (latest.round + 1 if model.run == latest.run else 1):
            return
        raise WireError(
            RejectReason.FUTURE_ROUND,
            f"run {model.run} round {model.round} right after run {latest.run} round "
            f"{latest.round}: an implausible jump for an unsigned model",
        )
