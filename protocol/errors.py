"""Why a peer's message was refused.

Two families of error, as in h11: misuse by our own caller is a bug and raises
``ValueError``/``TypeError``; bad input from a peer raises :class:`WireError`
carrying a :class:`RejectReason`. The reasons are part of the wire contract
(they appear in status and metrics documents); see docs/PROTOCOL.md.
"""

from __future__ import annotations

import enum


class RejectReason(str, enum.Enum):
    """Why a message was rejected. Values are stable strings used on the wire."""

    #: not decodable: bad msgpack/JSON, wrong types, missing fields
    MALFORMED = "malformed"
    #: a schema version this build does not understand
    BAD_VERSION = "bad_version"
    #: the payload names another job, or the topic and payload disagree
    WRONG_JOB = "wrong_job"
    #: the agent id in the payload differs from the one in the topic
    AGENT_MISMATCH = "agent_mismatch"
    #: an update for a round that has already closed
    STALE = "stale"
    #: signed for another run of the job (a replay from an earlier run)
    WRONG_RUN = "wrong_run"
    #: an update for a round that has not started
    FUTURE_ROUND = "future_round"
    #: the update was computed from a different global model than the round's
    BASE_MISMATCH = "base_mismatch"
    #: a second update for the same (job, round, agent); QoS 1 redelivers
    DUPLICATE = "duplicate"
    #: an agent the coordinator has never seen online
    UNKNOWN_AGENT = "unknown_agent"
    #: an agent that was not asked to take part in this round
    NOT_IN_COHORT = "not_in_cohort"
    #: tensor names, shapes or dtypes that do not match the model
    TENSOR_MISMATCH = "tensor_mismatch"
    #: NaN or Inf in a tensor or a metric
    NON_FINITE = "non_finite"
    #: the payload is larger than the configured limit
    TOO_LARGE = "too_large"
    #: an unknown or inconsistent update codec description
    BAD_CODEC = "bad_codec"
    #: a message arrived while no round was open (waiting, or the run is over)
    NO_ROUND = "no_round"
    #: a bare (unsigned) model or update where signatures are required (docs/SECURITY.md)
    UNSIGNED = "unsigned"
    #: a signature that does not verify with the signer's provisioned key: forged or altered
    BAD_SIGNATURE = "bad_signature"
    #: secure aggregation (docs/PROTOCOL.md §14): a message for a phase that is not open now,
    #: e.g. shares after the share phase closed or a masked input before the shares were relayed
    OUT_OF_PHASE = "out_of_phase"
    #: secure aggregation: an X25519 public key that is not 32 bytes, repeats another
    #: participant's, or agrees to the all-zero secret (a low-order point)
    BAD_KEY = "bad_key"
    #: secure aggregation: a Shamir share or an encrypted share that does not decrypt,
    #: is addressed to someone else, lies outside the field, or reconstructs a wrong secret
    BAD_SHARE = "bad_share"
    #: a partial aggregate whose exact-sum state is out of range or not canonical
    BAD_STATE = "bad_state"
    #: a model delta that, applied to its base, does not give its ``model_id`` (or a whole
    #: model whose weights do not hash to its ``model_id``): never trained on
    DIGEST_MISMATCH = "digest_mismatch"


class WireError(Exception):
    """A peer sent something we refuse. Never a bug on our side."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
