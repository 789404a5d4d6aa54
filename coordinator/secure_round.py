"""The SecAgg sessions of a run, as the round machine drives them: one per round attempt.

The round machine decides *when* a round opens, who is in its cohort and what
happens when it closes; this module turns that into a :class:`SecAggRound`, feeds
it the agents' messages (size-checked, reassembled from chunks, their signatures
verified), signs what the coordinator says back, and sums each call up as one
:class:`SecAggStep`. Rules of ``coordinator.rounds`` apply: pure, ``now`` passed
in, randomness injected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.config import RoundConfig
from coordinator.open_round import OpenRound
from coordinator.secagg import (
    PhaseClosed,
    SecAggAction,
    SecAggDone,
    SecAggFailed,
    SecAggRejected,
    SecAggRound,
)
from protocol import Presence, Publish, RejectReason, Topics, WireError, check_agent_level
from protocol.chunks import Reassembler, is_chunk_frame
from protocol.secagg.fixedpoint import RingSpec, choose_frac_bits
from protocol.secagg.messages import SecAggConfig, Session
from protocol.secagg.shamir import RandomBytes
from protocol.signing import COORDINATOR_SIGNER, ENVELOPE_OVERHEAD, Purpose, open_update, seal


@dataclass(slots=True)
class SecAggStep:
    """What one call to the stage produced, for the round machine to carry out."""

    publishes: list[Publish] = field(default_factory=list)
    rejected: list[SecAggRejected] = field(default_factory=list)
    #: a phase closed: the status changes
    progressed: bool = False
    done: SecAggDone | None = None
    failed: str | None = None
    bytes_up: int = 0
    #: payload bytes times the agents each message reaches (broadcasts reach the cohort)
    bytes_down: int = 0


class SecAggStage:
    """Opens a session per round attempt and carries its messages both ways."""

    def __init__(
        self,
        config: RoundConfig,
        shapes: Mapping[str, tuple[int, ...]],
        *,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        assert config.secagg is not None
        self.policy, self._config, self._shapes = config.secagg, config, dict(shapes)
        self._random, self._topics = random_bytes, Topics(config.job)
        self._chunks = Reassembler(config.max_reassembly_bytes, ttl_s=600.0,
                                   max_payload_size=config.max_update_bytes)
        self.session: SecAggRound | None = None
        #: the session's retained messages by topic, published again after a reconnect
        self.retained: dict[str, Publish] = {}

    def open(
        self, run: str, rs: OpenRound, presences: Mapping[str, Presence], now: float
    ) -> SecAggConfig:
        """Start the session of ``rs``'s current attempt; the ``secagg`` map to announce.

        The weight cap is the largest sample count the cohort advertises in presence, so
        no honest agent's weight is clipped (the policy's cap if any count is unknown).

        Raises:
            ValueError: if the cohort and bounds cannot fit the ring without overflow.
        """
        p, cohort = self.policy, rs.cohort
        session = Session(self._config.job, run, rs.number, rs.attempt)
        known = [n for a in cohort if (pr := presences.get(a)) and (n := pr.samples)]
        weight_max = max(known) if known and len(known) == len(cohort) else p.weight_max
        size = max(len(cohort), 1)
        ring = RingSpec(p.ring_bits, choose_frac_bits(p.ring_bits, p.clip, weight_max, size),
                        p.clip, weight_max, size)
        self.session = SecAggRound(
            session, ring, p, cohort, self._shapes, now=now, keys_deadline=now + p.keys_s,
            masked_deadline=rs.deadline, quorum=rs.quorum, min_inputs=self._config.min_replies,
            random_bytes=self._random,
            gone=frozenset(a for a in cohort if not ((pr := presences.get(a)) and pr.online)),
        )
        self.retained = {}
        return SecAggConfig(ring, p.keys_s)

    def next_deadline(self) -> float | None:
        return self.session.next_deadline() if self.session is not None else None

    def receive(self, agent: str, payload: bytes, now: float) -> SecAggStep:
        """Bytes on ``secagg/up/{agent}``: a whole message, or one chunk frame of it."""
        session, cfg = self.session, self._config
        step = SecAggStep(bytes_up=len(payload))
        try:
            check_agent_level(agent)
            if session is None:
                raise WireError(RejectReason.NO_ROUND, "no SecAgg session yet")
            if len(payload) > cfg.max_update_bytes + ENVELOPE_OVERHEAD:
                raise WireError(RejectReason.TOO_LARGE, f"secagg: {len(payload)} bytes")
            if is_chunk_frame(payload):
                whole = self._chunks.add(agent, payload, now)
                if whole is None:
                    return step
                payload = whole
            body = open_update(payload, job=cfg.job, run=session.session.run, agent=agent,
                               keys=cfg.agent_keys, max_body_bytes=cfg.max_update_bytes,
                               purpose=Purpose.SECAGG)
        except WireError as exc:
            step.rejected.append(SecAggRejected(agent, exc.reason, exc.detail))
            return step
        return self._step(session.handle(agent, body, now), step)

    def tick(self, now: float) -> SecAggStep:
        return self._step(self.session.tick(now) if self.session is not None else [])

    def drop(self, agent: str, now: float) -> SecAggStep:
        """``agent`` declined or went offline: no phase waits for it."""
        return self._step(self.session.drop(agent, now) if self.session is not None else [])

    def _step(self, actions: list[SecAggAction], step: SecAggStep | None = None) -> SecAggStep:
        step = step if step is not None else SecAggStep()
        session = self.session
        for action in actions:
            match action:
                case Publish():
                    assert session is not None
                    sealed = self._sealed(action, session.session.run)
                    cap = self._config.max_payload
                    if cap and len(sealed.payload) > cap:  # down messages are not chunked
                        step.failed = (f"a SecAgg message of {len(sealed.payload)} bytes exceeds "
                                       f"--max-payload {cap}: ask fewer agents or use "
                                       "--secagg-degree (docs/PROTOCOL.md §14.7)")
                        continue
                    step.publishes.append(sealed)
                    self.retained[sealed.topic] = sealed
                    everyone = sealed.topic == self._topics.secagg_down
                    step.bytes_down += len(sealed.payload) * (len(session.cohort) if everyone
                                                              else 1)
                case SecAggRejected():
                    step.rejected.append(action)
                case PhaseClosed():
                    step.progressed = True
                case SecAggDone():
                    step.done = action
                case SecAggFailed(message=message):
                    step.failed = message
        return step

    def _sealed(self, publish: Publish, run: str) -> Publish:
        """The coordinator's message signed, in the secure profile (purpose ``secagg``)."""
        key = self._config.signing_key
        if key is None:
            return publish
        body = seal(publish.payload, Purpose.SECAGG, job=self._config.job, run=run,
                    signer=COORDINATOR_SIGNER, key=key)
        return Publish(publish.topic, body, publish.retain)
