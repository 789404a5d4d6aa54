"""A site aggregator's or ingest worker's core: updates in, exact partial sums upstream.

A **site aggregator** runs beside a site broker that a bridge joins to the central
one (docs/SCALE.md): the coordinator's retained announcement comes down the bridge,
the site's agents publish their updates to the site broker only, and the site sends
the coordinator one :class:`~protocol.partial.PartialAggregate` per round attempt. It
closes its share of a round when every agent of the round's cohort at the site has
answered, or at its own deadline: ``close_share`` of the deadline the coordinator
announced, so that its partial arrives before the coordinator's deadline. A retry of
the round reopens it; the next partial carries only the agents not yet sent.

An **ingest worker** (``batching`` set) is one of N processes sharing the central
broker's update topics through an MQTT 5 shared subscription: it sees an arbitrary
share of the round's updates, so it sends a partial every ``batching.updates``
updates or ``batching.wait_s`` after the first one not yet sent. It keeps each sent
batch's deltas until the coordinator's :class:`~protocol.partial.Verdict`: a batch
refused because another worker already counted some of its agents (a redelivered
update) is summed again without them and sent again, so every update counts once.

Either way updates are admitted by the coordinator's own
:class:`~coordinator.validation.Intake` and summed by the round's own aggregator
(:func:`coordinator.global_model.round_aggregator`), so they accept exactly what the
coordinator would. Pure: ``now`` is passed in, :meth:`SiteAggregator.next_deadline`
says when to call back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from typing_extensions import assert_never

from coordinator.aggregate import Aggregator, Mergeable, mergeable
from coordinator.config import RoundConfig
from coordinator.events import MessageRejected, PresenceArrived, Tick, UpdateArrived
from coordinator.global_model import round_aggregator
from coordinator.open_round import OpenRound
from coordinator.roster import Roster
from coordinator.validation import Intake, RunView
from protocol import (
    ModelAnnouncement,
    Publish,
    RejectReason,
    Topics,
    WireError,
    asks,
    decode_model,
)
from protocol.chunks import is_chunk_frame
from protocol.keys import SigningKey, VerifyKey
from protocol.partial import (
    Contributor,
    PartialAggregate,
    Rejection,
    decode_verdict,
    encode_partial,
)
from protocol.signing import Purpose, open_model, seal

#: the share of the announced deadline a site waits before it sends what it has
CLOSE_SHARE = 0.8
#: an ingest worker's default batch: updates, and seconds after the first one not yet sent
BATCH_UPDATES, BATCH_WAIT_S = 64, 0.25


@dataclass(frozen=True, slots=True)
class Batching:
    """When an ingest worker sends: every ``updates`` accepted updates, or ``wait_s`` after
    the first one not yet sent, whichever comes first."""

    updates: int = BATCH_UPDATES
    wait_s: float = BATCH_WAIT_S

    def __post_init__(self) -> None:
        if self.updates < 1 or self.wait_s <= 0:
            raise ValueError(f"batching needs updates >= 1 and wait_s > 0, got {self}")


@dataclass(frozen=True, slots=True)
class ModelSeen:
    """The coordinator's retained announcement, as the bridge delivered it."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class VerdictSeen:
    """The coordinator's answer to one of this aggregator's partials."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PartialSent:
    """The site sent a share of a round: ``contributors`` updates, ``declined`` declines."""

    round_no: int
    attempt: int
    contributors: int
    declined: int


SiteEvent: TypeAlias = ModelSeen | VerdictSeen | PresenceArrived | UpdateArrived | Tick
SiteAction: TypeAlias = Publish | PartialSent | MessageRejected


@dataclass(slots=True)
class _Batch:
    """Accepted updates not yet sent (or sent and awaiting their verdict), summed as they
    come. ``kept`` holds their payloads as received when the batch may have to be summed
    again (payloads, not decoded deltas: they are smaller, and already in memory)."""

    aggregator: Aggregator
    merger: Mergeable
    #: when its first update came (None while empty): a worker sends ``wait_s`` after it
    started: float | None = None
    contributors: list[Contributor] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)
    kept: dict[str, bytes] = field(default_factory=dict)


class SiteAggregator:
    """One site's (or ingest worker's) share of every round; feed it events with
    :meth:`handle`."""

    def __init__(self, config: RoundConfig, *, site: str, signing_key: SigningKey | None = None,
                 coordinator_key: VerifyKey | None = None, close_share: float = CLOSE_SHARE,
                 batching: Batching | None = None) -> None:
        if not 0 < close_share <= 1:
            raise ValueError(f"close_share must be in (0, 1], got {close_share}")
        self.config, self.site = config, site
        self.topics = Topics(config.job)
        self._key, self._coordinator_key = signing_key, coordinator_key
        self._close_share, self._batching = close_share, batching
        self._roster = Roster(config)
        self._intake: Intake | None = None
        self._announced: ModelAnnouncement | None = None
        self._round: OpenRound | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._batch: _Batch | None = None
        #: sent batches awaiting their verdict, by the SHA-256 of the partial as sent
        self._pending: dict[str, _Batch] = {}
        #: agents of the current round already sent upstream (answers of earlier attempts)
        self._sent: set[str] = set()
        self._rejected: list[Rejection] = []
        self._bytes_in = 0
        self.done = False

    @property
    def agents_online(self) -> frozenset[str]:
        """The site's agents whose presence says online."""
        return frozenset(self._roster.online)

    @property
    def awaiting_verdict(self) -> int:
        """Partials sent whose verdict has not come yet."""
        return len(self._pending)

    def next_deadline(self) -> float | None:
        """When to send a :class:`Tick`: a site's share of the deadline, a worker's batch."""
        if self._batching is None:
            return self._round.deadline if self._round is not None else None
        started = self._batch.started if self._batch is not None else None
        return started + self._batching.wait_s if started is not None else None

    def handle(self, event: SiteEvent, now: float) -> list[SiteAction]:
        match event:
            case ModelSeen(payload=payload):
                return self._on_model(payload, now)
            case VerdictSeen(payload=payload):
                return self._on_verdict(payload)
            case PresenceArrived(agent=agent, payload=payload):
                try:
                    self._roster.apply(agent, payload)
                except WireError as exc:
                    return [MessageRejected(agent, None, exc.reason, f"presence: {exc.detail}")]
                return []
            case UpdateArrived(agent=agent, payload=payload):
                return self._on_update(agent, payload, now)
            case Tick():
                return self._on_tick(now)
            case _:
                assert_never(event)

    def _on_tick(self, now: float) -> list[SiteAction]:
        """A site closes at its share of the deadline; a worker takes updates until the
        next announcement (the coordinator closes rounds) and sends a batch when due."""
        due = self.next_deadline()
        if due is None or now < due:
            return []
        return self._close() if self._batching is None else self._flush()

    def _on_model(self, payload: bytes, now: float) -> list[SiteAction]:
        cfg = self.config
        try:
            body = open_model(payload, job=cfg.job, key=self._coordinator_key,
                              max_body_bytes=cfg.max_update_bytes * 4)
            ann = decode_model(body, cfg.max_update_bytes * 4)
        except WireError as exc:
            return [MessageRejected(None, None, exc.reason, f"model: {exc.detail}")]
        last = self._announced
        if last is not None and (ann.run, ann.round, ann.attempt) == (
                last.run, last.round, last.attempt) and not ann.done:
            return []  # the same announcement again (a reconnect, a retained copy)
        actions = self._close() if self._round is not None else []
        if last is None or (ann.run, ann.round) != (last.run, last.round):
            self._sent, self._pending = set(), {}  # no verdict can change a closed round
        self._announced = ann
        if ann.done:
            self.done = True
            return actions
        self._shapes = {name: tuple(a.shape) for name, a in ann.weights.items()}
        if self._intake is None:  # updates must use the codec the coordinator announces
            self._intake = Intake(replace(cfg, codec=ann.codec), self._shapes)
        here = frozenset(a for a in self._roster.online if asks(ann, a))  # named or hashed
        if self._batching is not None and ann.cohort is not None:
            cohort = frozenset(ann.cohort)  # a worker answers for the whole cohort
        else:
            cohort = here
        deadline_s = ann.deadline_s * self._close_share
        self._batch = self._new_batch()  # the round's first; its aggregator is the round's
        self._round = OpenRound(number=ann.round, attempt=ann.attempt, opened_at=now,
                                deadline=now + deadline_s, deadline_s=deadline_s,
                                cohort=cohort, quorum=max(len(cohort - self._sent), 1),
                                aggregator=self._batch.aggregator)
        self._round.accepted |= self._sent  # answered in an earlier attempt: duplicates now
        return actions

    def _new_batch(self) -> _Batch:
        """An empty batch summed by a fresh copy of the round's aggregator."""
        ann = self._announced
        assert ann is not None
        aggregator = round_aggregator(self.config, self._shapes, ann.round,
                                      len(ann.cohort) if ann.cohort is not None else 1)
        merger = mergeable(aggregator)
        if merger is None:
            raise ValueError(f"aggregator {self.config.aggregator} cannot be summed in parts")
        return _Batch(aggregator, merger)

    def _on_update(self, agent: str, payload: bytes, now: float) -> list[SiteAction]:
        rs, ann = self._round, self._announced
        self._bytes_in += len(payload)
        if self._intake is None or ann is None:
            return []  # nothing announced yet: the agents cannot have trained
        if self._batching is not None and is_chunk_frame(payload):
            detail = "an ingest worker takes whole updates: a shared subscription splits chunks"
            self._rejected.append(Rejection(agent, RejectReason.MALFORMED, detail))
            return [MessageRejected(agent, ann.round, RejectReason.MALFORMED, detail)]
        view = RunView(run=ann.run, completed=ann.round - 1, model_id=ann.model_id,
                       current=ann.round, accepting=rs, online=self._roster.online,
                       cohort_hash=ann.cohort_hash)
        try:
            taken = self._intake.take(view, agent, payload, now)
        except WireError as exc:
            rejected = MessageRejected(agent, ann.round, exc.reason, exc.detail)
            if rs is not None:
                self._rejected.append(Rejection(agent, exc.reason, exc.detail))
            return [rejected]
        if taken is None:
            return []
        assert rs is not None  # check_round refuses every update without an open round
        update, delta = taken
        if self._batch is None:
            self._batch = self._new_batch()
        batch = self._batch
        if batch.started is None:
            batch.started = now
        if delta is None:
            rs.declined.add(agent)
            batch.declined.append(agent)
        else:
            rs.tally(update)
            batch.aggregator.add(delta, update.samples)
            batch.contributors.append(Contributor(
                agent, update.samples, hashlib.sha256(payload).hexdigest(), dict(update.metrics)))
            if self._batching is not None:
                batch.kept[agent] = payload
        if rs.cohort <= rs.answered:
            return self._close()
        if self._batching is not None and len(batch.contributors) >= self._batching.updates:
            return self._flush()
        return []

    def _close(self) -> list[SiteAction]:
        """Send what the open attempt gathered, if anything, and close it."""
        actions = self._flush()
        self._round = None
        return actions

    def _flush(self) -> list[SiteAction]:
        """Send the batch gathered so far, if it holds anything."""
        batch, rs = self._batch, self._round
        self._batch = None
        if batch is None or rs is None or not (batch.contributors or batch.declined):
            return []
        return self._send(batch, rs.number, rs.attempt)

    def _send(self, batch: _Batch, round_no: int, attempt: int) -> list[SiteAction]:
        ann = self._announced
        assert ann is not None
        state = batch.merger.partial()
        partial = PartialAggregate(
            job=self.config.job, run=ann.run, round=round_no, model_id=ann.model_id,
            aggregator=self.site, total=state.total, total_weight=state.total_weight,
            contributors=tuple(sorted(batch.contributors, key=lambda c: c.agent)),
            declined=tuple(sorted(batch.declined)), rejected=tuple(self._rejected),
            bytes_in=self._bytes_in)
        self._sent |= partial.agents | set(batch.declined)
        self._rejected, self._bytes_in = [], 0
        body = encode_partial(partial)
        if self._key is not None:
            body = seal(body, Purpose.PARTIAL, job=self.config.job, run=ann.run,
                        signer=self.site, key=self._key)
        if self._batching is not None:
            self._pending[hashlib.sha256(body).hexdigest()] = batch
        sent = PartialSent(round_no, attempt, len(partial.contributors), len(batch.declined))
        return [Publish(self.topics.partial(self.site), body, retain=False), sent]

    def _on_verdict(self, payload: bytes) -> list[SiteAction]:
        """Forget a merged batch; sum a batch refused for agents counted elsewhere again
        without them; report any other refusal."""
        try:
            body = open_model(payload, job=self.config.job, key=self._coordinator_key,
                              max_body_bytes=len(payload), purpose=Purpose.VERDICT)
            v = decode_verdict(body)
        except WireError as exc:
            return [MessageRejected(None, None, exc.reason, f"verdict: {exc.detail}")]
        ann = self._announced
        batch = self._pending.pop(v.partial, None)
        if ann is None or batch is None or (v.run, v.aggregator) != (ann.run, self.site):
            return []  # not ours, not this round's, or answered already
        if v.merged:
            return []
        refused = MessageRejected(None, v.round, RejectReason(v.reason),
                                  f"partial of {len(batch.contributors)} refused")
        if v.reason != RejectReason.DUPLICATE.value or not v.counted:
            return [refused]
        counted, intake = set(v.counted), self._intake
        assert intake is not None  # set with the first announcement
        again = self._new_batch()
        again.started = batch.started
        again.declined = [a for a in batch.declined if a not in counted]
        for c in batch.contributors:
            if c.agent not in counted:
                payload = batch.kept[c.agent]  # admitted before: decoded again, unchecked
                taken = intake.take_checked(ann.run, c.agent, payload, 0.0, lambda _u: None)
                assert taken is not None and taken[1] is not None
                again.aggregator.add(taken[1], c.samples)
                again.contributors.append(c)
                again.kept[c.agent] = payload
        if not (again.contributors or again.declined):
            return [refused]
        return [refused, *self._send(again, v.round, ann.attempt)]
