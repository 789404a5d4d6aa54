"""The SecAgg sessions of a run, as the round machine drives them: one per round attempt.

The round machine decides *when* a round opens, who is in its cohort and what
happens when it closes; this module turns that into a :class:`SecAggRound`, feeds
it the agents' messages (size-checked, reassembled from chunks, their signatures
verified) and hands back its actions with the coordinator's messages signed.
Rules of ``coordinator.rounds`` apply: pure, ``now`` passed in, randomness injected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from coordinator.config import SecAggPolicy
from coordinator.secagg import (
    SecAggAction,
    SecAggRejected,
    SecAggRound,
)
from protocol import Publish, RejectReason, WireError
from protocol.chunks import Reassembler, is_chunk_frame
from protocol.secagg.fixedpoint import RingSpec, choose_frac_bits
from protocol.secagg.messages import SecAggConfig, Session
from protocol.secagg.shamir import RandomBytes
from protocol.signing import COORDINATOR_SIGNER, Purpose, SigningKey, VerifyKey, open_update, seal

#: an envelope's own fields on top of its body (protocol.signing.ENVELOPE_OVERHEAD)
_ENVELOPE = 512


class SecAggStage:
    """Opens a session per round attempt and carries its messages both ways."""

    def __init__(
        self,
        policy: SecAggPolicy,
        shapes: Mapping[str, tuple[int, ...]],
        *,
        job: str,
        max_message_bytes: int,
        max_reassembly_bytes: int,
        signing_key: SigningKey | None = None,
        agent_keys: Mapping[str, VerifyKey] | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self.policy, self._shapes, self._job = policy, dict(shapes), job
        self._max_bytes = max_message_bytes
        self._signing_key, self._agent_keys = signing_key, agent_keys
        self._random = random_bytes
        self._chunks = Reassembler(max_reassembly_bytes, ttl_s=600.0,
                                   max_payload_size=max_message_bytes)
        self.session: SecAggRound | None = None

    def open(
        self,
        session: Session,
        cohort: frozenset[str],
        samples: Mapping[str, int | None],
        *,
        now: float,
        deadline: float,
        quorum: int,
        min_inputs: int,
    ) -> SecAggConfig:
        """Start the session of one round attempt; the ``secagg`` map to announce.

        ``samples`` are the cohort's advertised sample counts: the weight cap is their
        maximum, so no honest agent's weight is clipped (the policy's cap if any is unknown).

        Raises:
            ValueError: if the cohort and bounds cannot fit the ring without overflow.
        """
        p = self.policy
        known = [n for a in cohort if (n := samples.get(a)) is not None and n > 0]
        weight_max = max(known) if known and len(known) == len(cohort) else p.weight_max
        size = max(len(cohort), 1)
        frac = choose_frac_bits(p.ring_bits, p.clip, weight_max, size)
        ring = RingSpec(p.ring_bits, frac, p.clip, weight_max, size)
        self.session = SecAggRound(
            session, ring, p, cohort, self._shapes, now=now, keys_deadline=now + p.keys_s,
            masked_deadline=deadline, quorum=quorum, min_inputs=min_inputs,
            random_bytes=self._random,
        )
        return SecAggConfig(ring, p.keys_s)

    def next_deadline(self) -> float | None:
        return self.session.next_deadline() if self.session is not None else None

    def receive(self, agent: str, payload: bytes, now: float) -> list[SecAggAction]:
        """Bytes on ``secagg/up/{agent}``: a whole message, or one chunk frame of it."""
        session = self.session
        if session is None:
            return [SecAggRejected(agent, RejectReason.NO_ROUND, "no SecAgg session yet")]
        try:
            if len(payload) > self._max_bytes + _ENVELOPE:
                raise WireError(RejectReason.TOO_LARGE, f"secagg: {len(payload)} bytes")
            if is_chunk_frame(payload):
                whole = self._chunks.add(agent, payload, now)
                if whole is None:
                    return []
                payload = whole
            body = open_update(payload, job=self._job, run=session.session.run, agent=agent,
                               keys=self._agent_keys, max_body_bytes=self._max_bytes,
                               purpose=Purpose.SECAGG)
        except WireError as exc:
            return [SecAggRejected(agent, exc.reason, exc.detail)]
        return self._sealed(session.handle(agent, body, now))

    def tick(self, now: float) -> list[SecAggAction]:
        return self._sealed(self.session.tick(now)) if self.session is not None else []

    def drop(self, agent: str, now: float) -> list[SecAggAction]:
        """``agent`` declined or went offline."""
        return self._sealed(self.session.drop(agent, now)) if self.session is not None else []

    def _sealed(self, actions: list[SecAggAction]) -> list[SecAggAction]:
        key, session = self._signing_key, self.session
        if key is None or session is None:
            return actions
        run = session.session.run
        return [
            Publish(a.topic, seal(a.payload, Purpose.SECAGG, job=self._job, run=run,
                                  signer=COORDINATOR_SIGNER, key=key), a.retain)
            if isinstance(a, Publish) else a
            for a in actions
        ]
