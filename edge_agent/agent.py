"""The agent's logic: model announcements in, training requests and updates out.

Rules of this module: it imports no paho, no torch, no threading, no clock. The
adapter runs the training the core asks for, the result comes back as an event.

Per (run, round, model_id) the agent trains at most once and answers exactly
once; if the coordinator asks again (a retry, or after a reconnect that may
have lost the update in flight) the cached answer is sent again, because the
coordinator counts each (job, round, agent) once.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from typing_extensions import assert_never

from edge_agent.downlink import (
    MODEL_CHUNK_TTL_S,
    Downlink,
    HeldModel,
    KeepModel,
    Subscribe,
    Unsubscribe,
)
from edge_agent.events import (
    AgentAction,
    AgentEvent,
    Connected,
    DeltaArrived,
    MessagesLost,
    ModelArrived,
    ModelRejected,
    RollCalled,
    RoundKey,
    RunFinished,
    SaveResidual,
    SecAggArrived,
    ShutdownRequested,
    Train,
    TrainingDone,
    TrainingFailed,
    UpdateSent,
)
from edge_agent.feedback import ErrorFeedback, Residual
from edge_agent.presence import Announcer
from edge_agent.secure_round import SecAggSeat
from edge_agent.trainer import TrainResult
from protocol import (
    ModelAnnouncement,
    Publish,
    Topics,
    Update,
    Weights,
    WireError,
    asks,
    check_id,
    encode_update,
)
from protocol.chunks import split
from protocol.keys import SigningKey, VerifyKey
from protocol.secagg.shamir import RandomBytes
from protocol.signing import Purpose, seal

# the core's events and actions live in edge_agent.events; importers may use either module
__all__ = [
    "AgentAction", "AgentCore", "AgentEvent", "Connected", "DeltaArrived", "KeepModel",
    "MODEL_CHUNK_TTL_S", "MessagesLost", "ModelArrived", "ModelRejected", "RoundKey", "RunFinished",
    "SaveResidual", "SecAggArrived", "ShutdownRequested", "Subscribe", "Train", "TrainingDone",
    "TrainingFailed", "Unsubscribe", "UpdateSent",
]

@dataclass(slots=True)
class _Answer:
    key: RoundKey
    #: (attempt, issued_at) of the announcement last answered: a new pair is a re-announcement
    asked: tuple[int, float]
    #: the update as published: one payload, or its chunk frames under a payload cap
    frames: tuple[bytes, ...]


class AgentCore:
    """One agent's state: the latest global model and what it has answered."""

    def __init__(
        self,
        job: str,
        agent: str,
        *,
        samples: int,
        trainer: str,
        device: str | None = None,
        feedback: ErrorFeedback | None = None,
        signing_key: SigningKey | None = None,
        coordinator_key: VerifyKey | None = None,
        random_bytes: RandomBytes = os.urandom,
        held: HeldModel | None = None,
        session: str = "s0",
    ) -> None:
        """``feedback`` carries a residual loaded from the device's state dir, if any, and
        ``held`` the global model kept there (deltas then apply to it).

        ``signing_key`` signs every update and every presence, for ``session`` (one per
        agent process: :mod:`edge_agent.presence`); with ``coordinator_key`` set, a model
        that is unsigned or not signed by it is refused (docs/SECURITY.md).
        ``random_bytes`` makes SecAgg's keys and seeds (seeded in tests).
        """
        self._signing_key = signing_key
        self._coordinator_key = coordinator_key
        self.job = check_id(job, "job")
        self.agent = check_id(agent, "agent")
        self._feedback = feedback if feedback is not None else ErrorFeedback()
        # Stochastic codecs draw from default_rng([plan.seed, round, this]): independent
        # across agents, and the same numbers if the round is ever encoded again.
        self._rng_key = int.from_bytes(hashlib.sha256(self.agent.encode()).digest()[:8], "big")
        self.topics = Topics(job)
        self._announcer = Announcer(self.topics, self.agent, samples=samples, trainer=trainer,
                                    device=device, signing_key=signing_key, session=session)
        self._latest: ModelAnnouncement | None = None
        self._training: RoundKey | None = None
        self._trained_on: ModelAnnouncement | None = None  # the model being trained from
        self._answer: _Answer | None = None
        #: runs this agent has trained for: only their final model ends its work
        self._runs_joined: set[str] = set()
        self._resend_armed = False
        self._finished: RoundKey | None = None
        self._downlink = Downlink(job, coordinator_key, held)
        self.models_rejected = 0
        self._seat = SecAggSeat(job, agent, random_bytes=random_bytes, rounding=self._rng,
                                signing_key=signing_key, coordinator_key=coordinator_key)

    @property
    def latest_model(self) -> ModelAnnouncement | None:
        """The newest valid global model this device holds (for local inference)."""
        return self._latest

    @property
    def held(self) -> HeldModel | None:
        """The version of the broadcast model deltas apply to (what :class:`KeepModel` saved)."""
        return self._downlink.held

    @property
    def residual(self) -> Residual | None:
        """The error-feedback residual carried into the next update (persisted by the adapter)."""
        return self._feedback.state

    @property
    def training(self) -> RoundKey | None:
        """The round the adapter is training for this core, until its result is fed back."""
        return self._training

    @property
    def busy(self) -> bool:
        return self._training is not None

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """What the adapter subscribes to (QoS 1) on (re)connecting: the deltas, the whole
        model while it is needed (docs/PROTOCOL.md §15.5), this agent's SecAgg topics. Read
        by the adapter's connect callback: attribute reads of immutable values, safe from
        paho's thread."""
        t = self.topics
        own = (t.secagg_down, t.secagg_down_to(self.agent), t.rollcall)
        return [(topic, 1) for topic in (*self._downlink.subscriptions, *own)]

    @property
    def unwanted(self) -> tuple[str, ...]:
        """What to unsubscribe from on reconnecting (a persistent session keeps filters)."""
        return self._downlink.unwanted

    def arrived(self, topic: str, payload: bytes) -> AgentEvent:
        """The event for a message on one of :attr:`subscriptions`."""
        t = self.topics
        if topic == t.rollcall or topic.startswith(t.secagg_down):
            return RollCalled(payload) if topic == t.rollcall else SecAggArrived(payload)
        return DeltaArrived(payload) if topic.startswith(t.delta) else ModelArrived(payload)

    def will(self) -> Publish:
        """The last will the adapter registers: presence ``offline``, retained."""
        return self._presence(online=False, at=0.0)

    def handle(
        self, event: AgentEvent, now: float = 0.0, *, wall: float = 0.0
    ) -> list[AgentAction]:
        """Apply ``event`` at monotonic time ``now`` (it ages partial chunked models);
        ``wall`` (Unix seconds) only stamps outgoing presence."""
        match event:
            case Connected():
                self._resend_armed = self._answer is not None
                self._downlink.resync()
                return [self._presence(online=True, at=wall)]
            case MessagesLost():
                self._downlink.resync()
                return []
            case ModelArrived(payload=payload):
                return self._on_model(payload, now, wall, delta=False)
            case DeltaArrived(payload=payload):
                return self._on_model(payload, now, wall, delta=True)
            case SecAggArrived(payload=payload):
                try:
                    return list(self._seat.receive(payload))
                except WireError as exc:
                    return [ModelRejected(exc.reason, f"secagg: {exc.detail}")]
            case RollCalled(payload=payload):
                try:
                    return [self._announcer.answer(payload, wall)]
                except WireError as exc:
                    return [ModelRejected(exc.reason, f"roll call: {exc.detail}")]
            case TrainingDone(key=key, result=result, train_s=train_s):
                return self._on_trained(key, result, train_s)
            case TrainingFailed(key=key, reason=reason):
                return self._on_failed(key, reason)
            case ShutdownRequested():
                return [self._presence(online=False, at=wall)]
            case _:
                assert_never(event)

    def _on_model(
        self, payload: bytes, now: float, wall: float, *, delta: bool
    ) -> list[AgentAction]:
        got = self._downlink.receive(payload, now, delta=delta)
        actions: list[AgentAction] = list(got.actions)
        if got.refused is not None:
            self.models_rejected += 1
            actions.insert(0, ModelRejected(got.refused.reason, got.refused.detail))
        then = [] if got.model is None else self._on_announced(got.model)
        if got.model is not None and self.agent in got.model.roll_call:
            # the coordinator does not count us: say we are here before anything else
            then.insert(0, self._presence(online=True, at=wall))
        # Train and RunFinished carry the model the adapter keeps; else say it outright.
        if got.kept is not None and not any(isinstance(a, Train | RunFinished) for a in then):
            actions.append(KeepModel(got.kept))
        return [*actions, *then]

    def _on_announced(self, model: ModelAnnouncement) -> list[AgentAction]:
        self._latest = model
        if model.done:
            # A retained final model of some earlier run ends nothing for a newcomer:
            # keep it as the device's model and wait for the next run. Said once (the
            # final model also comes as a delta or notice).
            if model.run not in self._runs_joined or self._finished == self._key(model):
                return []
            self._finished = self._key(model)
            return [RunFinished(model)]
        if not asks(model, self.agent):  # named, or hashed (docs/PROTOCOL.md §17)
            return []
        key: RoundKey = (model.run, model.round, model.model_id)
        answer = self._answer
        if answer is not None and answer.key == key:
            # Re-announced by a retry or a restarted coordinator, or we reconnected: the
            # update may have been lost, so send the same bytes again (counted once).
            asked = (model.attempt, model.issued_at)
            if asked != answer.asked or self._resend_armed:
                answer.asked = asked
                self._resend_armed = False
                return self._send(answer, resent=True)
            return []  # the same announcement again (QoS 1 redelivery)
        if model.secagg is not None:
            return self._join_secagg(model, key)
        if self._training is not None:
            return []  # the newest model is picked up when the current training ends
        return self._start(key, model)

    def _on_trained(self, key: RoundKey, result: TrainResult, train_s: float) -> list[AgentAction]:
        self._training = None
        model, trained_on = self._latest, self._trained_on
        # A final model can share the key of round 1 (a run stopped before any round closed).
        if model is None or model.done or self._key(model) != key:
            if model is not None and trained_on is not None and _still_taken(trained_on, model):
                # Buffered mode: the coordinator still takes work on an older version.
                return [*self._reply(trained_on, result, train_s), *self._train_latest()]
            return self._train_latest()  # a newer round (or the end) arrived while training
        return self._reply(model, result, train_s)

    def _reply(
        self, model: ModelAnnouncement, result: TrainResult, train_s: float
    ) -> list[AgentAction]:
        """Publish the update ``result`` makes against ``model``, the version trained from."""
        delta: Weights = {
            name: result.weights[name] - global_w for name, global_w in model.weights.items()
        }
        if model.secagg is not None:  # masked, on the secagg topic; no metrics in clear
            return list(self._seat.trained(self._key(model), delta, result.samples))
        before = self._feedback.state
        try:
            tensors = self._encode(model, delta)
        except ValueError as exc:  # a codec this build lacks, or a diverged (NaN) model
            return self._decline(model, f"cannot encode the update: {exc}")
        update = Update(
            job=self.job,
            agent=self.agent,
            round=model.round,
            model_id=model.model_id,
            samples=result.samples,
            codec=model.codec,
            tensors=tuple(tensors),
            metrics=result.metrics,
            train_s=train_s,
        )
        actions = self._answer_with(model, encode_update(update))
        after = self._feedback.state
        return actions if after is before else [*actions, SaveResidual(after)]

    def _encode(self, model: ModelAnnouncement, delta: Weights) -> list[dict[str, Any]]:
        """The delta's entries via error feedback (kept for biased codecs only)."""
        return self._feedback.encode(delta, model.codec, scope=model.run, rng=self._rng(model))

    def _rng(self, model: ModelAnnouncement) -> np.random.Generator:
        return np.random.default_rng([model.plan.seed, model.round, self._rng_key])

    def _join_secagg(self, model: ModelAnnouncement, key: RoundKey) -> list[AgentAction]:
        """Advertise keys for the round's session, and train unless the delta is here."""
        resend, self._resend_armed = self._resend_armed, False
        try:
            actions: list[AgentAction] = [*self._seat.join(model, key, resend=resend)]
        except ImportError:  # a device without `cryptography` cannot take part: it says so
            return self._decline(model, "secure aggregation needs 'cryptography': fedmq[secure]")
        if self._training is None and not self._seat.trained_for(key):
            actions.extend(self._start(key, model))
        return actions

    def _on_failed(self, key: RoundKey, reason: str) -> list[AgentAction]:
        self._training = None
        model = self._latest
        if model is None or model.done or self._key(model) != key:
            return self._train_latest()
        return self._decline(model, reason)

    def _decline(self, model: ModelAnnouncement, reason: str) -> list[AgentAction]:
        decline = Update(
            job=self.job,
            agent=self.agent,
            round=model.round,
            model_id=model.model_id,
            samples=0,
            codec=model.codec,
            tensors=(),
            declined=reason[:256] or "declined",
        )
        return self._answer_with(model, encode_update(decline))

    def _answer_with(self, model: ModelAnnouncement, payload: bytes) -> list[AgentAction]:
        if self._signing_key is not None:  # sign, then chunk: chunks reassemble to the envelope
            payload = seal(
                payload,
                Purpose.UPDATE,
                job=self.job,
                run=model.run,
                signer=self.agent,
                key=self._signing_key,
            )
        parts = split(payload, model.max_payload) if model.max_payload else None
        frames = (payload,) if parts is None else tuple(parts[1])
        self._answer = _Answer(self._key(model), (model.attempt, model.issued_at), frames)
        self._resend_armed = False
        return self._send(self._answer, resent=False)

    def _send(self, answer: _Answer, resent: bool) -> list[AgentAction]:
        topic = self.topics.update(self.agent)
        return [
            *(Publish(topic, frame, retain=False) for frame in answer.frames),
            UpdateSent(answer.key, sum(len(f) for f in answer.frames), resent),
        ]

    def _train_latest(self) -> list[AgentAction]:
        model = self._latest
        if model is None or model.done:
            return []
        if not asks(model, self.agent):
            return []
        key = self._key(model)
        answered = self._answer is not None and self._answer.key == key
        if answered or self._seat.trained_for(key):
            return []
        return self._start(key, model)

    def _start(self, key: RoundKey, model: ModelAnnouncement) -> list[AgentAction]:
        self._training, self._trained_on = key, model
        self._runs_joined.add(model.run)
        return [Train(key, model)]

    @staticmethod
    def _key(model: ModelAnnouncement) -> RoundKey:
        return (model.run, model.round, model.model_id)

    def _presence(self, online: bool, at: float) -> Publish:
        return self._announcer.presence(online, at)


def _still_taken(trained_on: ModelAnnouncement, latest: ModelAnnouncement) -> bool:
    """True if ``latest`` (buffered mode) still takes updates based on ``trained_on``."""
    lag = latest.round - trained_on.round
    return (
        not latest.done and latest.run == trained_on.run and 0 < lag <= latest.max_staleness
    )
