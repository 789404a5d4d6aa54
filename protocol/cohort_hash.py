"""The hashed cohort (docs/PROTOCOL.md §17): a round's agents named by one number, not a list.

An announcement naming every asked agent grows with the fleet (100,000 ids is a
couple of MB sent to every agent). With ``cohort_hash`` it carries a threshold
instead: agent ``a`` is asked in round ``r`` iff the first 8 bytes of
SHA-256(``"{job}/{run}/{r}/{a}"``), read as a big-endian unsigned integer, are
below it. Any agent checks itself; the coordinator checks every update the same
way, so the two always agree. The attempt is not hashed, so a retry asks the same
agents (and newcomers who pass).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from protocol.errors import RejectReason, WireError

if TYPE_CHECKING:
    from protocol.messages import ModelAnnouncement, ModelDelta

#: one more than the largest hash value: ``below`` = F * 2^64 asks a fraction F
HASH_SPACE = 1 << 64
#: the largest ``below`` msgpack can carry (a uint64); it asks every agent but one in 2^64
MAX_BELOW = HASH_SPACE - 1


@dataclass(frozen=True, slots=True)
class CohortHash:
    """The announcement's ``cohort_hash``: agents whose hash value is below ``below`` train."""

    below: int


def hash_input(job: str, run: str, round_no: int, agent: str) -> bytes:
    """The hashed bytes: ``"{job}/{run}/{round}/{agent}"`` in UTF-8, the round in decimal.
    Ids never hold ``/`` (§2), so distinct tuples never give the same text."""
    return f"{job}/{run}/{round_no}/{agent}".encode()


def cohort_value(job: str, run: str, round_no: int, agent: str) -> int:
    """The agent's 64-bit value for this round: SHA-256's first 8 bytes, big-endian."""
    digest = hashlib.sha256(hash_input(job, run, round_no, agent)).digest()
    return int.from_bytes(digest[:8], "big")


def in_cohort(rule: CohortHash, job: str, run: str, round_no: int, agent: str) -> bool:
    """True if ``agent`` is in round ``round_no``'s hashed cohort."""
    return cohort_value(job, run, round_no, agent) < rule.below


def below_for(fraction: float) -> int:
    """The threshold that asks each agent with probability ``fraction`` in (0, 1]:
    ``floor(F * 2^64)`` (F taken as its decimal text), clamped to 1..2^64 - 1."""
    exact = Fraction(str(fraction)) * HASH_SPACE
    return min(max(math.floor(exact), 1), MAX_BELOW)


def encode_cohort_hash(rule: CohortHash) -> dict[str, Any]:
    return {"below": rule.below}


def decode_cohort_hash(obj: Any, what: str) -> CohortHash:
    """The ``cohort_hash`` map, checked: exactly ``{"below": int in 1..2^64-1}``.

    Raises:
        WireError: MALFORMED otherwise.
    """
    if not isinstance(obj, dict) or set(obj) != {"below"}:
        raise WireError(RejectReason.MALFORMED, f"{what}.cohort_hash: expected {{below}}")
    below = obj["below"]
    if type(below) is not int or not 1 <= below <= MAX_BELOW:
        raise WireError(RejectReason.MALFORMED, f"{what}.cohort_hash.below: not in 1..2^64-1")
    return CohortHash(below)


def asks(m: ModelAnnouncement | ModelDelta, agent: str) -> bool:
    """True if announcement ``m`` asks ``agent`` to train: it is named in ``cohort``, or it
    passes ``cohort_hash``, or the round asks everyone (both null)."""
    if m.cohort_hash is not None:
        return in_cohort(m.cohort_hash, m.job, m.run, m.round, agent)
    return m.cohort is None or agent in m.cohort
