"""SecAgg's messages, as immutable values (layouts and limits: docs/PROTOCOL.md §14).

Agent -> coordinator, on ``fedmq/v1/{job}/secagg/up/{agent}``:
    :class:`KeysAdvert` (phase keys), :class:`SharesOut` (phase shares),
    :class:`MaskedInput` (phase masked), :class:`UnmaskShares` (phase unmask).
Coordinator -> agents: :class:`Roster` and :class:`Survivors` (retained on
``fedmq/v1/{job}/secagg/down``), :class:`Relay` (retained on ``.../secagg/down/{agent}``).

Every message names its :class:`Session`: a SecAgg session is one attempt of one
round, and its keys are used in no other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocol.secagg.fixedpoint import RingSpec


class SecAggPhase(str, enum.Enum):
    """A SecAgg session's phases, in order (Bonawitz et al. 2017, rounds 0, 1, 2 and 4)."""

    #: agents advertise two X25519 public keys (round 0, AdvertiseKeys)
    KEYS = "keys"
    #: agents send Shamir shares of their secrets, encrypted to each neighbour (round 1)
    SHARES = "shares"
    #: agents send their masked inputs (round 2, MaskedInputCollection)
    MASKED = "masked"
    #: agents reveal the shares that remove the survivors' and the dropped agents' masks
    UNMASK = "unmask"
    #: the sum was recovered
    DONE = "done"
    #: too few agents at some phase, or a secret that cannot be reconstructed
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Session:
    """Which SecAgg session a message belongs to."""

    job: str
    run: str
    round: int
    attempt: int

    @property
    def fields(self) -> tuple[str, str, int, int]:
        """The session as bound into every derived key (crypto.info)."""
        return (self.job, self.run, self.round, self.attempt)


@dataclass(frozen=True, slots=True)
class SecAggConfig:
    """The ``secagg`` map of a model announcement: this round is securely aggregated."""

    ring: RingSpec
    #: seconds the key phase stays open after the announcement
    keys_s: float


@dataclass(frozen=True, slots=True)
class KeysAdvert:
    session: Session
    agent: str
    #: X25519 public key for encrypting shares (Bonawitz's c_u^PK)
    enc_pk: bytes
    #: X25519 public key for pairwise masks (Bonawitz's s_u^PK)
    mask_pk: bytes


@dataclass(frozen=True, slots=True)
class Participant:
    agent: str
    enc_pk: bytes
    mask_pk: bytes


@dataclass(frozen=True, slots=True)
class Roster:
    """Everyone whose keys were collected (U1), sorted by agent id; index = position + 1."""

    session: Session
    participants: tuple[Participant, ...]
    #: the mask graph's degree k (``len(participants) - 1``: the complete graph)
    degree: int
    #: shares needed to reconstruct a secret, out of the k + 1 each secret is split into
    threshold: int
    #: 16 bytes ordering the Harary graph (protocol.secagg.graph)
    graph_seed: bytes
    #: seconds the share phase stays open
    deadline_s: float


@dataclass(frozen=True, slots=True)
class Sealed:
    """One encrypted share pair, from ``peer`` (in a relay) or to ``peer`` (in SharesOut)."""

    peer: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class SharesOut:
    session: Session
    agent: str
    #: SHA-256 commitment to the self-mask seed (crypto.commitment)
    commitment: bytes
    #: one per neighbour, sorted by recipient
    shares: tuple[Sealed, ...]


@dataclass(frozen=True, slots=True)
class Relay:
    """The shares addressed to ``agent``, from every neighbour in U2, sorted by sender."""

    session: Session
    agent: str
    shares: tuple[Sealed, ...]
    #: seconds the masked phase stays open (the training deadline)
    deadline_s: float


@dataclass(frozen=True, slots=True)
class MaskedInput:
    session: Session
    agent: str
    #: ``ring_length`` little-endian ring elements: input plus masks, mod 2^ring_bits
    data: bytes


@dataclass(frozen=True, slots=True)
class Survivors:
    """The agents whose masked inputs were summed (U3), sorted."""

    session: Session
    survivors: tuple[str, ...]
    #: seconds the unmask phase stays open
    deadline_s: float


@dataclass(frozen=True, slots=True)
class Revealed:
    """A share of ``owner``'s self-mask seed or mask key, held by the sender."""

    owner: str
    share: int


@dataclass(frozen=True, slots=True)
class UnmaskShares:
    session: Session
    agent: str
    #: shares of the self-mask seeds of survivors (the sender's own included), sorted
    seed_shares: tuple[Revealed, ...]
    #: shares of the mask keys of neighbours that dropped before masking, sorted
    key_shares: tuple[Revealed, ...]


#: what agents send and what the coordinator sends
UpMessage = KeysAdvert | SharesOut | MaskedInput | UnmaskShares
DownMessage = Roster | Relay | Survivors
