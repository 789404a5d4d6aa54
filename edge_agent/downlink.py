"""How the global model reaches an agent: whole, or as a delta from the version it holds.

The agent holds one version of the broadcast model (:class:`HeldModel`). A delta
on ``.../delta`` that names it as its base is applied and its digest checked; a
delta it cannot use (a notice, a missed version, no model yet, a refused or
corrupt one) makes it fetch the whole model from ``.../model``, and it keeps that
delta to apply once the model it builds on arrives (docs/PROTOCOL.md §15.5). It
subscribes to the model topics exactly while it needs the whole model.

Invariants: pure (``now`` is passed in, no clock, no files, no paho); bytes in,
announcements out; a refused message raises :class:`~protocol.WireError` and
changes nothing but the wish for the whole model. With deltas on, no
announcement leaves here unless its weights hash to its ``model_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import (
    ModelAnnouncement,
    ModelDelta,
    RejectReason,
    Topics,
    Weights,
    WireError,
    decode_model,
    decode_model_delta,
)
from protocol.broadcast import apply_delta, as_announcement, check_digest
from protocol.chunks import Reassembler, is_chunk_frame
from protocol.fields import DEFAULT_MAX_BYTES
from protocol.keys import VerifyKey
from protocol.signing import Purpose, open_model

#: incomplete chunked models older than this are dropped (a round's model is re-sent anyway)
MODEL_CHUNK_TTL_S = 600.0


@dataclass(frozen=True, slots=True)
class HeldModel:
    """The version of the broadcast model this device holds: what deltas apply to.

    ``model_id`` is ``weights_digest(weights)``; ``delta_codec`` is None when the
    run that sent it sends no deltas (then the whole model is fetched every round).
    """

    run: str
    round: int
    model_id: str
    weights: Weights
    done: bool
    delta_codec: str | None

    @classmethod
    def of(cls, model: ModelAnnouncement) -> HeldModel:
        return cls(model.run, model.round, model.model_id, model.weights, model.done,
                   model.delta_codec)

    @property
    def identity(self) -> tuple[str, str, bool, str | None]:
        """What makes a held version worth saving again: a new version, run, end or mode."""
        return (self.run, self.model_id, self.done, self.delta_codec)


# --- actions (out; the agent core passes them on) ---------------------------------------


@dataclass(frozen=True, slots=True)
class KeepModel:
    """The device holds a new version of the broadcast model that it neither trains on nor
    ends the run with now (those actions carry theirs); the adapter persists it."""

    held: HeldModel


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe (QoS 1) to these topic filters: the whole model is needed."""

    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Unsubscribe from these topic filters: deltas will do."""

    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Received:
    """What one payload on the model or delta topics came to."""

    #: the announcement to act on, if the payload completed one
    model: ModelAnnouncement | None
    #: what the adapter must do: (un)subscribe the model topics
    actions: tuple[Subscribe | Unsubscribe, ...]
    #: a new version now held, to persist
    kept: HeldModel | None = None
    #: why the payload was refused, if it was (counted and logged by the core)
    refused: WireError | None = None


class Downlink:
    """One agent's model intake: reassembly, signatures, decoding, versions, the fetch wish."""

    def __init__(
        self, job: str, coordinator_key: VerifyKey | None = None, held: HeldModel | None = None
    ) -> None:
        """``held``: the version the device kept across a restart (its weights' digest
        as ``model_id``), or None."""
        self._job = job
        self._key = coordinator_key
        self.topics = Topics(job)
        self.held = held
        self._pending: ModelDelta | None = None
        self._chunks = Reassembler(
            2 * DEFAULT_MAX_BYTES, ttl_s=MODEL_CHUNK_TTL_S, max_payload_size=DEFAULT_MAX_BYTES
        )
        self.wants_whole = held is None or held.delta_codec is None
        #: nothing taken since (re)connecting, losing messages or asking for the whole
        #: model: the retained one may be any round
        self._may_jump = True

    def resync(self) -> None:
        """The agent (re)connected or lost messages: the next model may be any round."""
        self._may_jump = True

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters to hold now (QoS 1): deltas always, the whole model when wanted."""
        whole = self.topics.model_family if self.wants_whole else ()
        return (*whole, *self.topics.delta_family)

    @property
    def unwanted(self) -> tuple[str, ...]:
        """Filters a persistent session may still hold that are not wanted now."""
        return () if self.wants_whole else self.topics.model_family

    def receive(self, payload: bytes, now: float, *, delta: bool) -> Received:
        """Take a payload from the model topics, or (``delta``) the delta topics."""
        before, kept = self.wants_whole, self.held
        try:
            model = self._delta(payload, now) if delta else self._whole(payload, now)
            refused = None
        except WireError as exc:
            model, refused = None, exc
        actions: list[Subscribe | Unsubscribe] = []
        if self.wants_whole and not before:
            self._may_jump = True  # the retained whole model may be any round
        if self.wants_whole != before:
            family = self.topics.model_family
            actions.append(Subscribe(family) if self.wants_whole else Unsubscribe(family))
        held = self.held
        new = held is not None and (kept is None or held.identity != kept.identity)
        return Received(model, tuple(actions), held if new else None, refused)

    def _whole(self, payload: bytes, now: float) -> ModelAnnouncement | None:
        """The announcement a payload on the model topics makes; None while chunks are
        missing or when it is older than the version held.

        Raises:
            WireError: for a refused model (signature, decoding, job, digest).
        """
        body = self._open(payload, now, Purpose.MODEL)
        if body is None:
            return None
        model = decode_model(body)
        self._check_job(model.job)
        if self._older(model.run, model.round, model.done):
            return None
        self._check_plausible(model.run, model.round)
        if model.delta_codec is not None:  # it will be a base: only exact weights may be
            check_digest(model.weights, model.model_id, "model")
        self.held = HeldModel.of(model)
        pending, self._pending = self._pending, None
        if pending is not None and pending.base_id == model.model_id:
            try:
                return self._applied(pending)
            except WireError:  # a bad delta: the model stands, and the fetch goes on
                return model
        if pending is not None and self._newer(pending):
            self._pending = pending  # it builds on a version still to come
        self._settle()
        return model

    def _delta(self, payload: bytes, now: float) -> ModelAnnouncement | None:
        """The announcement a payload on the delta topics makes; None while chunks are
        missing, when it is older than the version held, or when the whole model must
        be fetched first (:attr:`wants_whole` is then set).

        Raises:
            WireError: for a refused delta (signature, decoding, job, digest); the
                whole model is then wanted.
        """
        try:
            body = self._open(payload, now, Purpose.DELTA)
            if body is None:
                return None
            d = decode_model_delta(body)
            self._check_job(d.job)
        except WireError:
            self.wants_whole = True
            raise
        held = self.held
        if self._older(d.run, d.round, d.done):
            return None
        if held is not None and d.model_id == held.model_id:
            model = as_announcement(d, held.weights)  # the version held, announced again
            self.held = HeldModel.of(model)
            self._settle()
            return model
        if held is not None and d.base_id == held.model_id:
            return self._applied(d)
        self._pending = d if d.base_id is not None else None
        self.wants_whole = True
        return None

    def _applied(self, d: ModelDelta) -> ModelAnnouncement:
        """``d`` applied to the held version, checked.

        Raises:
            WireError: if it does not decode or does not hash to its ``model_id``; the
                whole model is then wanted and the held version stays.
        """
        held = self.held
        assert held is not None and d.base_id == held.model_id and d.delta_codec is not None
        self._check_plausible(d.run, d.round)
        try:
            weights = apply_delta(held.weights, d.tensors, d.delta_codec, d.dtype)
            check_digest(weights, d.model_id, "delta")
        except WireError:
            self.wants_whole = True
            raise
        model = as_announcement(d, weights)
        self.held = HeldModel.of(model)
        self._settle()
        return model

    def _open(self, payload: bytes, now: float, purpose: Purpose) -> bytes | None:
        if is_chunk_frame(payload):  # a piece of a model or delta sent in chunks, or a manifest
            whole = self._chunks.add(purpose.value, payload, now)
            if whole is None:
                return None
            payload = whole
        # Verify the bytes as received, then decode what they vouch for.
        return open_model(payload, job=self._job, key=self._key,
                          max_body_bytes=DEFAULT_MAX_BYTES, purpose=purpose)

    def _check_job(self, job: str) -> None:
        if job != self._job:
            raise WireError(RejectReason.WRONG_JOB, f"model for job {job!r}")

    def _older(self, run: str, round_no: int, done: bool) -> bool:
        """Whether a message is older than the version held: of its run, with a lower round,
        or anything but a final model once the final model is held. A final model is
        never older: it carries the last completed round, below an open round's."""
        held = self.held
        if held is None or held.run != run or done:
            return False
        return held.done or round_no < held.round

    def _check_plausible(self, run: str, round_no: int) -> None:
        """Refuse an unsigned version that cannot follow the one held.

        Connected and losing nothing, an agent sees every announcement: a run moves on
        by at most one round, and a new run starts at round 1. A forged far-future round
        would otherwise make every genuine model look late and freeze the fleet. Signed
        models are the coordinator's by proof; after a (re)connect, a loss, or a switch to
        the whole model the retained one may be any round (docs/PROTOCOL.md §16.3).

        Raises:
            WireError: FUTURE_ROUND for an implausible jump.
        """
        held = self.held
        if self._key is not None or self._may_jump or held is None:
            return
        if round_no <= (held.round + 1 if run == held.run else 1):
            return
        raise WireError(
            RejectReason.FUTURE_ROUND,
            f"run {run} round {round_no} right after run {held.run} round {held.round}: "
            "an implausible jump for an unsigned model",
        )

    def _newer(self, d: ModelDelta) -> bool:
        """Whether ``d`` names a later version of the held version's run."""
        held = self.held
        return held is not None and d.run == held.run and (
            d.round > held.round or (d.done and not held.done)
        )

    def _settle(self) -> None:
        """After the held version changed: fetch whole models exactly while the run sends
        no deltas or a newer delta waits for its base. Later versions must follow it."""
        self._may_jump = False
        held = self.held
        self.wants_whole = held is None or held.delta_codec is None or self._pending is not None
