"""The agent's side of one SecAgg session: keys, shares, masked input, unmasking.

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017, Fig. 4 (the semi-honest protocol, rounds 0, 1, 2 and 4);
    Bell et al., CCS 2020 (SecAgg+: shares and masks over a k-regular graph).

Rules of this module:
1. Pure: no clock, no paho, no threads. Randomness comes from the ``random_bytes``
   the caller injects (``os.urandom`` in production, a seeded source in tests).
2. Each phase is answered once. The same coordinator message again gets the same
   reply bytes (QoS 1 redelivers; a reconnect re-reads retained messages); a
   *different* one for a phase already answered is refused, so a coordinator can
   never collect both secrets of one peer by asking twice.
3. Bad input raises :class:`~protocol.errors.WireError` and changes nothing.
"""

from __future__ import annotations

import enum

import numpy as np

from protocol.errors import RejectReason, WireError
from protocol.secagg import crypto, shamir
from protocol.secagg.crypto import pair_key, self_key, share_key
from protocol.secagg.fixedpoint import Ring, add_into, encode_input, subtract_into
from protocol.secagg.graph import connected, neighbours
from protocol.secagg.messages import (
    DownMessage,
    KeysAdvert,
    MaskedInput,
    Relay,
    Revealed,
    Roster,
    Sealed,
    SecAggConfig,
    Session,
    SharesOut,
    Survivors,
    UnmaskShares,
)
from protocol.secagg.wire import decode_share_pair, encode_share_pair, encode_up
from protocol.tensors import Weights


class ClientPhase(str, enum.Enum):
    """How far this agent has gone in its session."""

    #: keys sent, waiting for the roster
    ADVERTISED = "advertised"
    #: encrypted shares sent, waiting for the relay and for training
    SHARED = "shared"
    #: masked input sent, waiting for the survivors
    MASKED = "masked"
    #: unmask shares sent: this agent's part is over
    UNMASKED = "unmasked"


class SecAggClient:
    """One agent in one SecAgg session (one attempt of one round)."""

    def __init__(
        self, session: Session, agent: str, config: SecAggConfig, random_bytes: shamir.RandomBytes
    ) -> None:
        self.session, self.agent, self.config = session, agent, config
        self._random = random_bytes
        self._enc = crypto.keypair(random_bytes)
        self._mask = crypto.keypair(random_bytes)
        self._seed = random_bytes(shamir.SECRET_BYTES)
        self.phase = ClientPhase.ADVERTISED
        self._roster: Roster | None = None
        self._graph: dict[str, frozenset[str]] = {}
        self._index: dict[str, int] = {}
        #: my own shares of my seed and my mask key, at my index
        self._own: tuple[int, int] = (0, 0)
        #: (seed share, key share) received from each neighbour that shared (my N2)
        self._held: dict[str, tuple[int, int]] = {}
        #: X25519(my enc key, each neighbour's): the share keys of both directions
        self._enc_shared: dict[str, bytes] = {}
        self._relay: Relay | None = None
        self._input: Ring | None = None
        self._survivors: Survivors | None = None
        self._replies: dict[ClientPhase, bytes] = {}

    def advertise(self) -> bytes:
        """Phase keys: the two public keys (the same bytes every time it is asked)."""
        if ClientPhase.ADVERTISED not in self._replies:
            advert = KeysAdvert(self.session, self.agent, self._enc.public, self._mask.public)
            self._replies[ClientPhase.ADVERTISED] = encode_up(advert)
        return self._replies[ClientPhase.ADVERTISED]

    def receive(self, message: DownMessage) -> bytes | None:
        """Apply a coordinator message of this session; the reply to publish, if any.

        Raises:
            WireError: when the message is refused (the session is unchanged).
        """
        if message.session != self.session:
            raise WireError(RejectReason.STALE, f"message of session {message.session}")
        match message:
            case Roster():
                return self._on_roster(message)
            case Relay():
                return self._on_relay(message)
            case Survivors():
                return self._on_survivors(message)

    def set_input(self, delta: Weights, samples: int, rng: np.random.Generator) -> bytes | None:
        """The trained delta arrived: the masked input, once the relay is here too."""
        if self._input is None:
            self._input = encode_input(delta, samples, self.config.ring, rng)
        return self._maybe_mask()

    # --- phases -----------------------------------------------------------------------

    def _on_roster(self, roster: Roster) -> bytes | None:
        if self._roster is not None:
            return self._again(self._roster == roster, ClientPhase.SHARED, "roster")
        mine = {p.agent: p for p in roster.participants}.get(self.agent)
        if mine is None or (mine.enc_pk, mine.mask_pk) != (self._enc.public, self._mask.public):
            raise WireError(RejectReason.BAD_KEY, "the roster does not show this agent's keys")
        names = [p.agent for p in roster.participants]
        graph = neighbours(names, roster.degree, roster.graph_seed)
        index = {a: i + 1 for i, a in enumerate(names)}
        holders = sorted(graph[self.agent] | {self.agent})
        t = roster.threshold
        if len(holders) < t:
            raise WireError(RejectReason.MALFORMED, f"{len(holders)} holders for threshold {t}")
        xs = [index[a] for a in holders]
        seed_shares = shamir.split(self._seed, t, xs, self._random)
        key_shares = shamir.split(self._mask.secret, t, xs, self._random)
        keys = {p.agent: p.enc_pk for p in roster.participants}
        sealed = []
        for peer in holders:
            if peer == self.agent:
                continue
            self._enc_shared[peer] = self._enc.agree(keys[peer])  # both directions' keys
            key, aad = share_key(self._enc_shared[peer], self.session, self.agent, peer)
            x = index[peer]
            plain = encode_share_pair(seed_shares[x], key_shares[x])
            sealed.append(Sealed(peer, crypto.encrypt(key, aad, plain)))
        commitment = crypto.commitment(self._seed, (*self.session.fields, self.agent))
        reply = encode_up(SharesOut(self.session, self.agent, commitment, tuple(sealed)))
        mine_x = index[self.agent]
        self._roster, self._graph, self._index = roster, graph, index
        self._own = (seed_shares[mine_x], key_shares[mine_x])
        self._replies[ClientPhase.SHARED] = reply
        self.phase = ClientPhase.SHARED
        return reply

    def _on_relay(self, relay: Relay) -> bytes | None:
        roster = self._roster
        if roster is None:
            raise WireError(RejectReason.OUT_OF_PHASE, "a relay before the roster")
        if self._relay is not None:
            return self._again(self._relay == relay, ClientPhase.MASKED, "relay")
        if relay.agent != self.agent:
            raise WireError(RejectReason.AGENT_MISMATCH, f"relay for {relay.agent!r}")
        held: dict[str, tuple[int, int]] = {}
        for item in relay.shares:
            shared = self._enc_shared.get(item.peer)  # exactly the neighbours
            if shared is None:
                raise WireError(RejectReason.BAD_SHARE, f"a share from non-neighbour {item.peer!r}")
            key, aad = share_key(shared, self.session, item.peer, self.agent)
            held[item.peer] = decode_share_pair(crypto.decrypt(key, aad, item.ciphertext))
        if len(held) + 1 < roster.threshold:  # Bonawitz round 2: abort below t
            detail = f"{len(held)} neighbours shared, threshold {roster.threshold}"
            raise WireError(RejectReason.MALFORMED, f"relay: too few for a sum: {detail}")
        self._relay, self._held = relay, held
        return self._maybe_mask()

    def _maybe_mask(self) -> bytes | None:
        roster, x = self._roster, self._input
        if roster is None or self._relay is None or x is None:
            return None
        if ClientPhase.MASKED in self._replies:
            return self._replies[ClientPhase.MASKED]
        dtype = self.config.ring.dtype
        y = np.array(x, dtype=dtype)  # (L+1,) ring elements; a copy: x stays unmasked
        add_into(y, crypto.prg(self_key(self._seed, self.session, self.agent), y.size, dtype))
        masks = {p.agent: p.mask_pk for p in roster.participants}
        for peer in sorted(self._held):
            shared = self._mask.agree(masks[peer])
            mask = crypto.prg(pair_key(shared, self.session, self.agent, peer), y.size, dtype)
            # the lower id adds, the higher subtracts: the pair cancels in the sum
            (add_into if self.agent < peer else subtract_into)(y, mask)
        reply = encode_up(MaskedInput(self.session, self.agent, y.tobytes()))
        self._replies[ClientPhase.MASKED] = reply
        self.phase = ClientPhase.MASKED
        return reply

    def _on_survivors(self, message: Survivors) -> bytes | None:
        roster = self._roster
        if roster is None or ClientPhase.MASKED not in self._replies:
            raise WireError(RejectReason.OUT_OF_PHASE, "survivors before this agent masked")
        if self._survivors is not None:
            return self._again(self._survivors == message, ClientPhase.UNMASKED, "survivors")
        alive = set(message.survivors)
        if self.agent not in alive:
            raise WireError(RejectReason.MALFORMED, "survivors omit this agent, which masked")
        if not alive <= set(self._index):
            raise WireError(RejectReason.NOT_IN_COHORT, "survivors outside the roster")
        shared_with = set(self._held)
        if (alive & self._graph[self.agent]) - shared_with:
            raise WireError(RejectReason.MALFORMED, "a survivor that never shared with us")
        if len(alive) < roster.threshold:
            raise WireError(RejectReason.MALFORMED, f"{len(alive)} survivors < threshold")
        if not connected(alive, self._graph):  # else each component's sum would leak
            raise WireError(RejectReason.MALFORMED, "the survivors' mask graph is disconnected")
        seeds = [Revealed(self.agent, self._own[0])]
        seeds += [Revealed(p, self._held[p][0]) for p in shared_with & alive]
        keys = [Revealed(p, self._held[p][1]) for p in shared_with - alive]
        reply = encode_up(UnmaskShares(
            self.session, self.agent,
            tuple(sorted(seeds, key=lambda r: r.owner)),
            tuple(sorted(keys, key=lambda r: r.owner)),
        ))
        self._survivors = message
        self._replies[ClientPhase.UNMASKED] = reply
        self.phase = ClientPhase.UNMASKED
        return reply

    def _again(self, same: bool, phase: ClientPhase, what: str) -> bytes | None:
        """A coordinator message for a phase already answered: same reply, or refuse."""
        if not same:
            raise WireError(RejectReason.OUT_OF_PHASE, f"a different {what} in the same session")
        return self._replies.get(phase)
