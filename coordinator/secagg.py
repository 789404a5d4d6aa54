"""The coordinator's side of one SecAgg session: collect, relay, sum, unmask.

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017, Fig. 4: the semi-honest protocol (rounds 0 AdvertiseKeys,
    1 ShareKeys, 2 MaskedInputCollection, 4 Unmasking; round 3, the consistency
    check of the malicious-server variant, is not implemented: docs/SECURITY.md).
    Bell et al., CCS 2020: SecAgg+ masks over a random k-regular graph.

Rules of this module:
1. Pure: ``now`` is passed in, randomness is injected, no clock, no paho.
2. Every phase closes when everyone it waits for has answered, or at its deadline
   with enough answers; too few fails the session with a message saying which
   phase and why, never an exception. ``dropped`` records who fell out where.
3. A refused message changes nothing; it comes back as one :class:`SecAggRejected`.
4. Memory is O(model): masked inputs are summed as they arrive.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

from coordinator.config import SecAggPolicy
from coordinator.unmask import UnmaskError, unmask
from protocol import ClosedBy
from protocol.errors import RejectReason, WireError
from protocol.publish import Publish
from protocol.secagg import crypto
from protocol.secagg.fixedpoint import RingSpec, RingSum, add_into, ring_length
from protocol.secagg.graph import connected, effective_degree, neighbours
from protocol.secagg.messages import (
    KeysAdvert,
    MaskedInput,
    Participant,
    Relay,
    Roster,
    Sealed,
    SecAggPhase,
    Session,
    SharesOut,
    Survivors,
    UnmaskShares,
    UpMessage,
)
from protocol.secagg.shamir import RandomBytes
from protocol.secagg.wire import SEED_BYTES, decode_up, encode_down
from protocol.topics import Topics

#: an agent's message -> the phase it answers
_PHASE_OF: dict[type, SecAggPhase] = {
    KeysAdvert: SecAggPhase.KEYS, SharesOut: SecAggPhase.SHARES,
    MaskedInput: SecAggPhase.MASKED, UnmaskShares: SecAggPhase.UNMASK,
}
_ORDER = list(SecAggPhase)
@functools.cache
def _probe() -> crypto.KeyPair:
    """Any clamped X25519 scalar kills a low-order point; this one needs no randomness."""
    return crypto.KeyPair(bytes(range(1, 33)))


# --- actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecAggRejected:
    agent: str
    reason: RejectReason
    detail: str


@dataclass(frozen=True, slots=True)
class PhaseClosed:
    """``phase`` closed with ``kept`` agents going on; ``dropped`` fell out in it."""

    phase: SecAggPhase
    kept: int
    dropped: frozenset[str]


@dataclass(frozen=True, slots=True)
class SecAggDone:
    result: RingSum
    #: the agents whose inputs are in the sum (U3)
    survivors: frozenset[str]
    #: why the masked phase closed: quorum, every input in, or its deadline
    closed_by: ClosedBy
    #: who dropped out in which phase
    dropped: Mapping[SecAggPhase, frozenset[str]]


@dataclass(frozen=True, slots=True)
class SecAggFailed:
    message: str


SecAggAction: TypeAlias = Publish | SecAggRejected | PhaseClosed | SecAggDone | SecAggFailed


@dataclass(slots=True)
class _Gathered:
    """What each phase collected, by agent."""

    keys: dict[str, KeysAdvert] = field(default_factory=dict)
    shares: dict[str, SharesOut] = field(default_factory=dict)
    masked: set[str] = field(default_factory=set)
    unmask: dict[str, UnmaskShares] = field(default_factory=dict)


class SecAggRound:
    """One session: the cohort's keys in, the unmasked weighted sum out."""

    def __init__(
        self,
        session: Session,
        ring: RingSpec,
        policy: SecAggPolicy,
        cohort: frozenset[str],
        shapes: Mapping[str, tuple[int, ...]],
        *,
        now: float,
        keys_deadline: float,
        masked_deadline: float,
        quorum: int,
        min_inputs: int,
        random_bytes: RandomBytes,
        gone: frozenset[str] = frozenset(),
    ) -> None:
        """``gone``: cohort agents already known offline (no phase waits for them)."""
        self.session, self.ring, self.policy = session, ring, policy
        self.cohort, self._shapes = cohort, dict(shapes)
        self._topics = Topics(session.job)
        self._length = ring_length(shapes)
        self._masked_deadline, self._quorum = masked_deadline, quorum
        self._min_inputs = max(min_inputs, 2)
        self._random = random_bytes
        self.phase = SecAggPhase.KEYS
        self.deadline = keys_deadline
        self.started_at = now
        self.got = _Gathered()
        self.roster: Roster | None = None
        self._graph: dict[str, frozenset[str]] = {}
        self._total = np.zeros(self._length, dtype=ring.dtype)  # (L+1,) running sum mod 2^b
        self.dropped: dict[SecAggPhase, frozenset[str]] = {}
        #: agents known not to answer (declined, or offline): no phase waits for them
        self._gone: set[str] = set(gone)
        self._closed_by = ClosedBy.DEADLINE
        self.message = ""

    @property
    def finished(self) -> bool:
        return self.phase in (SecAggPhase.DONE, SecAggPhase.FAILED)

    @property
    def survivors(self) -> frozenset[str]:
        return frozenset(self.got.masked)

    def next_deadline(self) -> float | None:
        return None if self.finished else self.deadline

    # --- entry points -------------------------------------------------------------------

    def handle(self, agent: str, body: bytes, now: float) -> list[SecAggAction]:
        """An agent's (verified, reassembled) SecAgg message from ``secagg/up/{agent}``."""
        try:
            message = self._admit(agent, decode_up(body))
        except WireError as exc:
            return [SecAggRejected(agent, exc.reason, exc.detail)]
        self._gone.discard(agent)
        match message:
            case KeysAdvert():
                self.got.keys[agent] = message
            case SharesOut():
                self.got.shares[agent] = message
            case MaskedInput():
                add_into(self._total, np.frombuffer(message.data, dtype=self.ring.dtype))
                self.got.masked.add(agent)
            case UnmaskShares():
                self.got.unmask[agent] = message
        return self._advance(now, at_deadline=False)

    def drop(self, agent: str, now: float) -> list[SecAggAction]:
        """``agent`` declined or went offline: stop waiting for it (it may still answer)."""
        if self.finished:
            return []
        self._gone.add(agent)
        return self._advance(now, at_deadline=False)

    def tick(self, now: float) -> list[SecAggAction]:
        if self.finished or now < self.deadline:
            return []
        return self._advance(now, at_deadline=True)

    # --- validation ------------------------------------------------------------------------

    def _admit(self, agent: str, message: UpMessage) -> UpMessage:
        """``message`` if it belongs to the open phase and is well formed for it.

        Raises:
            WireError: with the reason it is refused.
        """
        self._check_header(agent, message)
        match message:
            case KeysAdvert():
                self._check_keys(message)
            case SharesOut():
                if {s.peer for s in message.shares} != self._graph[agent]:
                    raise WireError(RejectReason.BAD_SHARE, "shares not for exactly its neighbours")
            case MaskedInput():
                want = self._length * self.ring.dtype.itemsize
                if len(message.data) != want:
                    detail = f"masked input of {len(message.data)} bytes, want {want}"
                    raise WireError(RejectReason.TENSOR_MISMATCH, detail)
            case UnmaskShares():
                self._check_unmask(message)
        return message

    def _check_header(self, agent: str, message: UpMessage) -> None:
        """Raises: WireError unless ``message`` is ``agent``'s, of this session and phase."""
        s, mine = message.session, self.session
        if message.agent != agent:
            raise WireError(RejectReason.AGENT_MISMATCH, f"message names {message.agent!r}")
        if s.job != mine.job:
            raise WireError(RejectReason.WRONG_JOB, f"for job {s.job!r}")
        if s != mine:
            future = s.run == mine.run and (s.round, s.attempt) > (mine.round, mine.attempt)
            reason = RejectReason.FUTURE_ROUND if future else RejectReason.STALE
            raise WireError(reason, f"for round {s.round} attempt {s.attempt} of {s.run}")
        phase = _PHASE_OF[type(message)]
        if phase is not self.phase:
            if self._answered(phase, agent):
                raise WireError(RejectReason.DUPLICATE, f"{agent} already sent {phase.value}")
            if self.finished or _ORDER.index(phase) < _ORDER.index(self.phase):
                raise WireError(RejectReason.STALE, f"{phase.value} phase has closed")
            raise WireError(RejectReason.OUT_OF_PHASE, f"{phase.value} during {self.phase.value}")
        if agent not in self._expected():
            raise WireError(RejectReason.NOT_IN_COHORT, f"{agent} is not in this {phase.value}")
        if self._answered(phase, agent):
            raise WireError(RejectReason.DUPLICATE, f"{agent} already sent {phase.value}")

    def _expected(self) -> set[str] | frozenset[str]:
        """Who the open phase waits for: U0, U1, U2, U3."""
        match self.phase:
            case SecAggPhase.KEYS:
                return self.cohort
            case SecAggPhase.SHARES:
                return set(self.got.keys)
            case SecAggPhase.MASKED:
                return set(self.got.shares)
            case SecAggPhase.UNMASK:
                return self.got.masked
        return frozenset()

    def _answered(self, phase: SecAggPhase, agent: str) -> bool:
        got = self.got
        seen: dict[SecAggPhase, Collection[str]] = {
            SecAggPhase.KEYS: got.keys, SecAggPhase.SHARES: got.shares,
            SecAggPhase.MASKED: got.masked, SecAggPhase.UNMASK: got.unmask}
        return agent in seen.get(phase, ())

    def _check_keys(self, advert: KeysAdvert) -> None:
        for pk in (advert.enc_pk, advert.mask_pk):
            _probe().agree(pk)  # BAD_KEY for a low-order point
        taken = {k for a in self.got.keys.values() for k in (a.enc_pk, a.mask_pk)}
        if {advert.enc_pk, advert.mask_pk} & taken:
            raise WireError(RejectReason.BAD_KEY, "a public key another agent advertised")

    def _check_unmask(self, message: UnmaskShares) -> None:
        """An honest agent reveals exactly: seed shares of its surviving neighbourhood
        (itself included) and key shares of its neighbours that dropped before masking."""
        agent, alive = message.agent, self.got.masked
        shared = self._graph[agent] & set(self.got.shares)
        seeds = {r.owner for r in message.seed_shares}
        keys = {r.owner for r in message.key_shares}
        if seeds != (shared | {agent}) & alive or keys != shared - alive:
            raise WireError(RejectReason.BAD_SHARE, "unmask shares for the wrong agents")

    # --- phase transitions --------------------------------------------------------------------

    def _advance(self, now: float, at_deadline: bool) -> list[SecAggAction]:
        match self.phase:
            case SecAggPhase.KEYS:
                return self._close_keys(now, at_deadline)
            case SecAggPhase.SHARES:
                return self._close_shares(now, at_deadline)
            case SecAggPhase.MASKED:
                return self._close_masked(now, at_deadline)
            case SecAggPhase.UNMASK:
                return self._close_unmask(at_deadline)
        return []

    def _close_keys(self, now: float, at_deadline: bool) -> list[SecAggAction]:
        u1 = sorted(self.got.keys)
        if not at_deadline and self.cohort - set(u1) - self._gone:
            return []
        if len(u1) < self._min_inputs:
            return self._fail(f"{len(u1)} of {len(self.cohort)} agents sent keys, "
                              f"{self._min_inputs} needed")
        degree = effective_degree(len(u1), self.policy.degree)
        seed = self._random(SEED_BYTES)
        self._graph = neighbours(u1, degree, seed)
        people = tuple(Participant(a, self.got.keys[a].enc_pk, self.got.keys[a].mask_pk)
                       for a in u1)
        self.roster = Roster(self.session, people, degree, self.policy.shares_needed(degree), seed,
                             self.policy.shares_s)
        closed = self._next(SecAggPhase.SHARES, self.cohort - set(u1), now + self.policy.shares_s)
        return [closed, Publish(self._topics.secagg_down, encode_down(self.roster), retain=True)]

    def _close_shares(self, now: float, at_deadline: bool) -> list[SecAggAction]:
        assert self.roster is not None
        u2 = self.got.shares
        if not at_deadline and set(self.got.keys) - set(u2) - self._gone:
            return []
        need = max(self._min_inputs, self.roster.threshold)
        if len(u2) < need:
            return self._fail(f"{len(u2)} of {len(self.got.keys)} agents sent shares, "
                              f"{need} needed")
        inbox: dict[str, list[Sealed]] = {a: [] for a in u2}
        for sender in sorted(u2):
            for item in u2[sender].shares:
                if item.peer in inbox:
                    inbox[item.peer].append(Sealed(sender, item.ciphertext))
        deadline_s = max(self._masked_deadline - now, 0.0)
        publishes: list[SecAggAction] = [
            Publish(self._topics.secagg_down_to(a),
                    encode_down(Relay(self.session, a, tuple(items), deadline_s)), retain=True)
            for a, items in sorted(inbox.items())
        ]
        dropped = set(self.got.keys) - set(u2)
        closed = self._next(SecAggPhase.MASKED, dropped, max(self._masked_deadline, now))
        return [closed, *publishes]

    def _close_masked(self, now: float, at_deadline: bool) -> list[SecAggAction]:
        assert self.roster is not None
        u3, u2 = self.got.masked, set(self.got.shares)
        everyone = not u2 - u3 - self._gone
        if not (at_deadline or everyone or len(u3) >= self._quorum):
            return []
        why = self._unmaskable()
        if why is not None:
            if at_deadline or everyone:
                return self._fail(why)
            return []  # quorum reached but not yet safe to unmask: wait for more
        self._closed_by = (ClosedBy.DEADLINE if at_deadline else  # as the round machine:
                           ClosedBy.QUORUM if len(u3) >= self._quorum else ClosedBy.ALL_REPLIED)
        survivors = Survivors(self.session, tuple(sorted(u3)), self.policy.unmask_s)
        closed = self._next(SecAggPhase.UNMASK, u2 - u3, now + self.policy.unmask_s)
        return [closed, Publish(self._topics.secagg_down, encode_down(survivors), retain=True)]

    def _unmaskable(self) -> str | None:
        """Why the survivors cannot be unmasked safely and completely, or None."""
        assert self.roster is not None
        t, u3, u2 = self.roster.threshold, self.got.masked, set(self.got.shares)
        need = max(self._min_inputs, t)
        if len(u3) < need:
            return f"{len(u3)} of {len(u2)} agents sent masked inputs, {need} needed"
        if not connected(u3, self._graph):
            return "the survivors' mask graph is disconnected: unmasking would reveal partial sums"
        for agent in sorted(u2):
            holders = (self._graph[agent] & u3) | ({agent} & u3)
            if len(holders) < t:
                return f"only {len(holders)} surviving holders of {agent}'s shares, {t} needed"
        return None

    def _close_unmask(self, at_deadline: bool) -> list[SecAggAction]:
        assert self.roster is not None
        u5, u3 = self.got.unmask, self.got.masked
        if not at_deadline and u3 - set(u5) - self._gone:
            return []
        self.dropped[SecAggPhase.UNMASK] = frozenset(u3 - set(u5))
        closed = PhaseClosed(SecAggPhase.UNMASK, len(u5), self.dropped[SecAggPhase.UNMASK])
        try:
            total = unmask(self._total, session=self.session, ring=self.ring,
                           roster=self.roster, graph=self._graph, shared=self.got.shares,
                           survivors=u3, answers=u5.values(), shapes=self._shapes)
        except UnmaskError as exc:
            return [closed, *self._fail(str(exc))]
        self.phase = SecAggPhase.DONE
        return [closed, SecAggDone(total, frozenset(u3), self._closed_by, dict(self.dropped))]

    def _next(self, phase: SecAggPhase, dropped: set[str] | frozenset[str], deadline: float
              ) -> PhaseClosed:
        closing = self.phase
        self.dropped[closing] = frozenset(dropped)
        self.phase, self.deadline = phase, deadline
        return PhaseClosed(closing, len(self._expected()), frozenset(dropped))

    def _fail(self, why: str) -> list[SecAggAction]:
        self.message = f"secagg {self.phase.value} phase: {why}"
        self.phase = SecAggPhase.FAILED
        return [SecAggFailed(self.message)]
