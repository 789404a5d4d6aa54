"""An agent's seat in SecAgg rounds: one :class:`~edge_agent.secagg.SecAggClient` per session,
fed by the agent core, its replies signed and chunked like updates.

Rules of this module (those of ``edge_agent.agent``): no paho, no clock, no threads.
A session is one attempt of one round. A retry of the round is a new session: the
agent advertises fresh keys and re-masks the delta it already trained, so it never
trains twice for one (run, round, model_id) and never reuses a key across sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_agent.events import RoundKey
from edge_agent.secagg import SecAggClient
from protocol import ModelAnnouncement, Publish, Topics, Weights, WireError
from protocol.chunks import split
from protocol.keys import SigningKey, VerifyKey
from protocol.secagg.messages import DownMessage, Relay, Roster, Session, Survivors
from protocol.secagg.shamir import RandomBytes
from protocol.secagg.wire import decode_down
from protocol.signing import Purpose, open_model, seal
from protocol.wire import DEFAULT_MAX_BYTES

#: the order a session's coordinator messages come in
_ORDER: list[type] = [Roster, Relay, Survivors]


@dataclass(frozen=True, slots=True)
class _Trained:
    key: RoundKey
    delta: Weights
    samples: int


class SecAggSeat:
    """The current SecAgg session of one agent, and the delta it masks."""

    def __init__(
        self,
        job: str,
        agent: str,
        *,
        random_bytes: RandomBytes,
        rounding: Callable[[ModelAnnouncement], np.random.Generator],
        signing_key: SigningKey | None = None,
        coordinator_key: VerifyKey | None = None,
    ) -> None:
        """``rounding(model)``: the generator for the stochastic rounding of that round."""
        self.job, self.agent = job, agent
        self.topics = Topics(job)
        self._random, self._rounding = random_bytes, rounding
        self._signing_key, self._coordinator_key = signing_key, coordinator_key
        self._client: SecAggClient | None = None
        self._model: ModelAnnouncement | None = None
        self._trained: _Trained | None = None
        #: messages of a session not joined yet (a retained roster can overtake the model)
        self._early: list[DownMessage] = []

    @property
    def session(self) -> Session | None:
        return self._client.session if self._client is not None else None

    def trained_for(self, key: RoundKey) -> bool:
        """Whether the delta for ``key`` is here (a retry need not train again)."""
        return self._trained is not None and self._trained.key == key

    def join(self, model: ModelAnnouncement, key: RoundKey, *, resend: bool) -> list[Publish]:
        """A SecAgg announcement: advertise keys for its session (once; again if ``resend``)."""
        assert model.secagg is not None
        session = Session(self.job, model.run, model.round, model.attempt)
        client, joined = self._client, self._model
        # the same announcement again (QoS 1, a reconnect): the same session. Another
        # announcement with the same session fields comes from a restarted coordinator:
        # a new session, with fresh keys, since the old coordinator's state is gone
        same = joined is not None and joined.issued_at == model.issued_at
        if client is not None and client.session == session and same:
            return self._frames(client.advertise(), model) if resend else []
        self._client, self._model = SecAggClient(session, self.agent, model.secagg,
                                                 self._random), model
        out = self._frames(self._client.advertise(), model)
        if self._trained is not None and self._trained.key != key:
            self._trained = None  # a delta of another round is never masked here
        early, self._early = [m for m in self._early if m.session == session], []
        for message in sorted(early, key=lambda m: _ORDER.index(type(m))):
            try:
                out += self._frames(self._client.receive(message), model)
            except WireError:
                continue  # refused now as it would have been on arrival
        return out + self._mask()

    def trained(self, key: RoundKey, delta: Weights, samples: int) -> list[Publish]:
        """Training for ``key`` finished: mask the delta once the relay is here."""
        self._trained = _Trained(key, delta, samples)
        return self._mask()

    def receive(self, payload: bytes) -> list[Publish]:
        """A message on ``secagg/down[/{agent}]``: the reply to publish, if any.

        Raises:
            WireError: for a message refused (unsigned, forged, malformed, or one the
                session refuses). A retained message of an older session is ignored; one
                of a session not joined yet is kept until the model announcing it arrives.
        """
        body = open_model(payload, job=self.job, key=self._coordinator_key,
                          max_body_bytes=DEFAULT_MAX_BYTES, purpose=Purpose.SECAGG)
        message = decode_down(body)
        client, model = self._client, self._model
        if client is None or model is None or message.session != client.session:
            mine = client.session if client is not None else None
            theirs = message.session
            if mine is not None and theirs.run == mine.run and (
                    theirs.round, theirs.attempt) < (mine.round, mine.attempt):
                return []  # retained from an earlier session: not ours to answer
            self._early = [*self._early[-(len(_ORDER) - 1):], message]  # kept until joined
            return []
        return self._frames(client.receive(message), model)

    def _mask(self) -> list[Publish]:
        client, model, trained = self._client, self._model, self._trained
        if client is None or model is None or trained is None:
            return []
        reply = client.set_input(trained.delta, trained.samples, self._rounding(model))
        return self._frames(reply, model)

    def _frames(self, body: bytes | None, model: ModelAnnouncement) -> list[Publish]:
        """``body`` signed (in the secure profile), then chunked above the payload cap."""
        if body is None:
            return []
        if self._signing_key is not None:
            body = seal(body, Purpose.SECAGG, job=self.job, run=model.run, signer=self.agent,
                        key=self._signing_key)
        parts = split(body, model.max_payload) if model.max_payload else None
        topic = self.topics.secagg_up(self.agent)
        return [Publish(topic, f, retain=False) for f in ((body,) if parts is None else parts[1])]
