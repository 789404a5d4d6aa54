"""A site aggregator's core: its agents' updates in, one exact partial sum upstream per round.

It runs beside a site broker that a bridge joins to the central one (docs/SCALE.md):
the coordinator's retained announcement comes down the bridge, the site's agents
publish their updates to the site broker only, and the site aggregator sends the
coordinator one :class:`~protocol.partial.PartialAggregate` per round attempt.
Updates are admitted by the coordinator's own :class:`~coordinator.validation.Intake`
and summed by the round's own aggregator (:func:`coordinator.global_model.round_aggregator`),
so a site accepts exactly what the coordinator would.

A site closes its share of a round when every agent of the round's cohort at the site
has answered, or at its own deadline: ``close_share`` of the deadline the coordinator
announced, so that its partial arrives before the coordinator's deadline. A retry of
the round reopens it; the next partial carries only the agents not yet sent.

Pure: ``now`` is passed in, :meth:`SiteAggregator.next_deadline` says when to call back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import TypeAlias

from typing_extensions import assert_never

from coordinator.aggregate import Mergeable, mergeable
from coordinator.config import RoundConfig
from coordinator.events import MessageRejected, PresenceArrived, Tick, UpdateArrived
from coordinator.global_model import round_aggregator
from coordinator.open_round import OpenRound
from coordinator.roster import Roster
from coordinator.validation import Intake, RunView
from protocol import ModelAnnouncement, Publish, Topics, WireError, decode_model
from protocol.keys import SigningKey, VerifyKey
from protocol.partial import Contributor, PartialAggregate, Rejection, encode_partial
from protocol.signing import Purpose, open_model, seal

#: the share of the announced deadline a site waits before it sends what it has
CLOSE_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class ModelSeen:
    """The coordinator's retained announcement, as the bridge delivered it."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PartialSent:
    """The site sent its share of a round: ``contributors`` updates, ``declined`` declines."""

    round_no: int
    attempt: int
    contributors: int
    declined: int


SiteEvent: TypeAlias = ModelSeen | PresenceArrived | UpdateArrived | Tick
SiteAction: TypeAlias = Publish | PartialSent | MessageRejected


class SiteAggregator:
    """One site's share of every round; feed it events with :meth:`handle`."""

    def __init__(self, config: RoundConfig, *, site: str, signing_key: SigningKey | None = None,
                 coordinator_key: VerifyKey | None = None, close_share: float = CLOSE_SHARE
                 ) -> None:
        if not 0 < close_share <= 1:
            raise ValueError(f"close_share must be in (0, 1], got {close_share}")
        self.config, self.site = config, site
        self.topics = Topics(config.job)
        self._key, self._coordinator_key = signing_key, coordinator_key
        self._close_share = close_share
        self._roster = Roster(config)
        self._intake: Intake | None = None
        self._announced: ModelAnnouncement | None = None
        self._round: OpenRound | None = None
        self._merger: Mergeable | None = None
        #: agents of the current round already sent upstream (answers of earlier attempts)
        self._sent: set[str] = set()
        self._contributors: list[Contributor] = []
        self._rejected: list[Rejection] = []
        self._bytes_in = 0
        self.done = False

    @property
    def agents_online(self) -> frozenset[str]:
        """The site's agents whose presence says online."""
        return frozenset(self._roster.online)

    def next_deadline(self) -> float | None:
        return self._round.deadline if self._round is not None else None

    def handle(self, event: SiteEvent, now: float) -> list[SiteAction]:
        match event:
            case ModelSeen(payload=payload):
                return self._on_model(payload, now)
            case PresenceArrived(agent=agent, payload=payload):
                try:
                    self._roster.apply(agent, payload)
                except WireError as exc:
                    return [MessageRejected(agent, None, exc.reason, f"presence: {exc.detail}")]
                return []
            case UpdateArrived(agent=agent, payload=payload):
                return self._on_update(agent, payload, now)
            case Tick():
                rs = self._round
                return self._close() if rs is not None and now >= rs.deadline else []
            case _:
                assert_never(event)

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
            self._sent = set()
        self._announced = ann
        if ann.done:
            self.done = True
            return actions
        shapes = {name: tuple(a.shape) for name, a in ann.weights.items()}
        if self._intake is None:  # updates must use the codec the coordinator announces
            self._intake = Intake(replace(cfg, codec=ann.codec), shapes)
        here = frozenset(self._roster.online)
        cohort = here & frozenset(ann.cohort) if ann.cohort is not None else here
        aggregator = round_aggregator(cfg, shapes, ann.round, len(ann.cohort or cohort))
        self._merger = mergeable(aggregator)
        if self._merger is None:
            raise ValueError(f"aggregator {cfg.aggregator} cannot be summed at a site")
        deadline_s = ann.deadline_s * self._close_share
        self._round = OpenRound(number=ann.round, attempt=ann.attempt, opened_at=now,
                                deadline=now + deadline_s, deadline_s=deadline_s,
                                cohort=cohort, quorum=max(len(cohort - self._sent), 1),
                                aggregator=aggregator)
        self._round.accepted |= self._sent  # answered in an earlier attempt: duplicates now
        return actions

    def _on_update(self, agent: str, payload: bytes, now: float) -> list[SiteAction]:
        rs, ann = self._round, self._announced
        self._bytes_in += len(payload)
        if self._intake is None or ann is None:
            return []  # nothing announced yet: the agents cannot have trained
        view = RunView(run=ann.run, completed=ann.round - 1, model_id=ann.model_id,
                       current=ann.round, accepting=rs, online=self._roster.online)
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
        if delta is None:
            rs.declined.add(agent)
        else:
            rs.take_update(update, delta)
            digest = hashlib.sha256(payload).hexdigest()
            self._contributors.append(
                Contributor(agent, update.samples, digest, dict(update.metrics)))
        if rs.cohort <= rs.answered:
            return self._close()
        return []

    def _close(self) -> list[SiteAction]:
        """Send what the open attempt gathered, if anything, and close it."""
        rs, ann, merger = self._round, self._announced, self._merger
        assert rs is not None and ann is not None and merger is not None
        self._round = None
        declined = tuple(sorted(rs.declined - self._sent))
        if not self._contributors and not declined:
            return []
        state = merger.partial()
        partial = PartialAggregate(
            job=self.config.job, run=ann.run, round=rs.number, model_id=ann.model_id,
            aggregator=self.site, total=state.total, total_weight=state.total_weight,
            contributors=tuple(sorted(self._contributors, key=lambda c: c.agent)),
            declined=declined, rejected=tuple(self._rejected), bytes_in=self._bytes_in)
        self._sent |= partial.agents | set(declined)
        self._contributors, self._rejected, self._bytes_in = [], [], 0
        body = encode_partial(partial)
        if self._key is not None:
            body = seal(body, Purpose.PARTIAL, job=self.config.job, run=ann.run,
                        signer=self.site, key=self._key)
        sent = PartialSent(rs.number, rs.attempt, len(partial.contributors), len(declined))
        return [Publish(self.topics.partial(self.site), body, retain=False), sent]
