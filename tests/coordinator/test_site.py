"""The site aggregator's core: it admits what the coordinator admits, and its partial merges."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator import (
    MessageRejected,
    PartialArrived,
    PartialMerged,
    PresenceArrived,
    RoundClosed,
    Tick,
    UpdateArrived,
)
from coordinator.site import Batching, ModelSeen, PartialSent, SiteAggregator, VerdictSeen
from protocol import (
    ModelAnnouncement,
    Presence,
    Publish,
    RejectReason,
    TrainPlan,
    encode_model,
    encode_presence,
)
from protocol.cohort_hash import CohortHash, in_cohort
from protocol.partial import Verdict, decode_partial, encode_verdict
from tests.coordinator.test_partials import (
    AGENTS,
    MODEL_ID,
    WEIGHTS,
    config,
    started,
    update_bytes,
)


def announcement(round_no: int = 1, attempt: int = 0, done: bool = False) -> bytes:
    return encode_model(ModelAnnouncement(
        job="j", run="run1", round=round_no, attempt=attempt, model_id=MODEL_ID, task="t",
        plan=TrainPlan(), codec="none", deadline_s=10.0, weights=WEIGHTS, done=done))


def site_with(agents: list[str]) -> SiteAggregator:
    site = SiteAggregator(config(), site="site-a")
    for a in agents:
        site.handle(PresenceArrived(a, encode_presence(Presence(agent=a, online=True))), 0.0)
    site.handle(ModelSeen(announcement()), 0.0)
    return site


def partials(actions: list[Any]) -> list[bytes]:
    return [a.payload for a in actions if isinstance(a, Publish)]


def test_a_site_sends_once_its_agents_answered_and_the_coordinator_takes_it() -> None:
    site = site_with(AGENTS[:3])
    assert site.handle(UpdateArrived("a0", update_bytes("a0")), 1.0) == []
    garbage = site.handle(UpdateArrived("a1", b"\x00garbage"), 1.0)
    assert [a.reason for a in garbage if isinstance(a, MessageRejected)] == [
        RejectReason.MALFORMED]
    site.handle(UpdateArrived("a1", update_bytes("a1")), 1.0)
    actions = site.handle(UpdateArrived("a2", update_bytes("a2")), 1.0)
    (payload,) = partials(actions)
    assert [a for a in actions if isinstance(a, PartialSent)] == [PartialSent(1, 0, 3, 0)]
    p = decode_partial(payload, 1 << 20)
    assert p.agents == {"a0", "a1", "a2"} and p.rejected[0].reason is RejectReason.MALFORMED
    rounds = started()
    rounds.handle(PartialArrived("site-a", payload), 1.0)
    assert rounds.rejected_total == {"malformed": 1}


def test_a_site_sends_at_its_share_of_the_deadline_and_a_retry_only_the_new_agents() -> None:
    site = site_with(AGENTS[:3])
    site.handle(UpdateArrived("a0", update_bytes("a0")), 1.0)
    assert site.next_deadline() == 8.0  # 0.8 of the announced 10 s
    assert site.handle(Tick(), 7.9) == []
    (first,) = partials(site.handle(Tick(), 8.0))
    assert decode_partial(first, 1 << 20).agents == {"a0"}
    site.handle(ModelSeen(announcement(attempt=1)), 12.0)
    again = site.handle(UpdateArrived("a0", update_bytes("a0")), 12.5)  # re-sent on retry
    assert [a.reason for a in again if isinstance(a, MessageRejected)] == [
        RejectReason.DUPLICATE]
    site.handle(UpdateArrived("a1", update_bytes("a1")), 13.0)
    (second,) = partials(site.handle(UpdateArrived("a2", update_bytes("a2")), 13.0))
    assert decode_partial(second, 1 << 20).agents == {"a1", "a2"}


def test_the_final_model_ends_the_site() -> None:
    site = site_with(AGENTS[:1])
    site.handle(ModelSeen(announcement(done=True)), 1.0)
    assert site.done and site.next_deadline() is None
    late = site.handle(UpdateArrived("a0", update_bytes("a0")), 2.0)
    assert [a.reason for a in late if isinstance(a, MessageRejected)] == [RejectReason.STALE]


# --- ingest workers: batches, verdicts, and duplicates across workers ------------------------

def worker(name: str, updates: int = 3, wait_s: float = 0.5) -> SiteAggregator:
    """An ingest worker that knows every agent's presence and round 1's announcement."""
    w = SiteAggregator(config(), site=name, batching=Batching(updates, wait_s))
    for a in AGENTS:
        w.handle(PresenceArrived(a, encode_presence(Presence(agent=a, online=True))), 0.0)
    w.handle(ModelSeen(announcement()), 0.0)
    return w


def to_coordinator(rounds: Any, name: str, actions: list[Any], now: float) -> list[Any]:
    """Deliver a worker's partials to the coordinator; return what it answered."""
    answers: list[Any] = []
    for payload in partials(actions):
        answers += rounds.handle(PartialArrived(name, payload), now)
    return answers


def to_worker(w: SiteAggregator, answers: list[Any], now: float) -> list[Any]:
    """Deliver the coordinator's verdicts for ``w`` to it; return what it did."""
    topic = f"fedmq/v1/j/verdict/{w.site}"
    out: list[Any] = []
    for a in answers:
        if isinstance(a, Publish) and a.topic == topic:
            out += w.handle(VerdictSeen(a.payload), now)
    return out


def test_a_worker_sends_every_n_updates_or_when_its_first_unsent_update_has_waited() -> None:
    w = worker("w1", updates=2, wait_s=0.5)
    assert w.next_deadline() is None  # a worker never closes a round: the coordinator does
    assert w.handle(UpdateArrived("a0", update_bytes("a0")), 1.0) == []
    (first,) = partials(w.handle(UpdateArrived("a1", update_bytes("a1")), 1.1))
    assert decode_partial(first, 1 << 20).agents == {"a0", "a1"}
    assert w.handle(UpdateArrived("a2", update_bytes("a2")), 2.0) == []
    assert w.next_deadline() == 2.5
    assert w.handle(Tick(), 2.4) == []
    (second,) = partials(w.handle(Tick(), 2.5))
    assert decode_partial(second, 1 << 20).agents == {"a2"}
    assert w.awaiting_verdict == 2 and w.next_deadline() is None


def test_a_duplicate_delivered_to_two_workers_counts_once_and_nothing_is_lost() -> None:
    flat = started()
    for a in AGENTS:
        flat.handle(UpdateArrived(a, update_bytes(a)), 1.0)
    rounds, w1, w2 = started(), worker("w1"), worker("w2")
    # a2's update reaches both workers (a redelivery after a reconnect, say)
    sent1 = [x for a in ("a0", "a1", "a2")
             for x in w1.handle(UpdateArrived(a, update_bytes(a)), 1.0)]
    sent2 = [x for a in ("a2", "a3", "a4")
             for x in w2.handle(UpdateArrived(a, update_bytes(a)), 1.0)]
    answers1 = to_coordinator(rounds, "w1", sent1, 1.0)
    answers2 = to_coordinator(rounds, "w2", sent2, 1.0)
    assert [a.reason for a in answers2 if isinstance(a, MessageRejected)] == [
        RejectReason.DUPLICATE]
    assert to_worker(w1, answers1, 1.1) == [] and w1.awaiting_verdict == 0
    # w2 sums its batch again without a2 and sends it
    again = to_worker(w2, answers2, 1.1)
    (resent,) = partials(again)
    assert decode_partial(resent, 1 << 20).agents == {"a3", "a4"}
    answers = to_coordinator(rounds, "w2", again, 1.2)
    assert any(isinstance(a, PartialMerged) for a in answers)
    assert to_worker(w2, answers, 1.3) == [] and w2.awaiting_verdict == 0
    last = to_coordinator(rounds, "w1", w1.handle(UpdateArrived("a5", update_bytes("a5")), 1.4)
                          + w1.handle(Tick(), 2.0), 2.0)
    (closed,) = [a for a in last if isinstance(a, RoundClosed)]
    assert closed.metrics.accepted == len(AGENTS)
    for name, flat_weights in flat.weights.items():
        assert rounds.weights[name].tobytes() == flat_weights.tobytes()


def test_a_worker_reports_a_refused_batch_and_ignores_verdicts_not_its_own() -> None:
    rounds, w = started(), worker("w1", updates=1)
    sent = w.handle(UpdateArrived("a0", update_bytes("a0", model_id="0" * 64)), 1.0)
    assert [a.reason for a in sent if isinstance(a, MessageRejected)] == [
        RejectReason.BASE_MISMATCH]  # refused at the worker, as the coordinator would
    sent = w.handle(UpdateArrived("a1", update_bytes("a1")), 1.0)
    answers = to_coordinator(rounds, "w1", sent, 1.0)
    # a verdict naming another worker or an unknown partial, and garbage, change nothing
    other = [Publish("fedmq/v1/j/verdict/w1", encode_verdict(Verdict(
        job="j", run="run1", round=1, aggregator="w2", partial="0" * 64, merged=True)),
        retain=False)]
    assert to_worker(w, other, 1.1) == [] and w.awaiting_verdict == 1
    garbage = w.handle(VerdictSeen(b"\x00"), 1.1)
    assert [a.reason for a in garbage if isinstance(a, MessageRejected)] == [
        RejectReason.MALFORMED]
    assert to_worker(w, answers, 1.2) == [] and w.awaiting_verdict == 0
    # the same batch again: the coordinator refuses it, and the worker has nothing to resend
    replay = to_coordinator(rounds, "w1", sent, 1.3)
    assert [a.reason for a in replay if isinstance(a, MessageRejected)] == [
        RejectReason.DUPLICATE]
    assert to_worker(w, replay, 1.4) == []


def test_a_worker_refuses_an_aggregator_that_cannot_be_summed_in_parts() -> None:
    w = SiteAggregator(config(aggregator="median"), site="w1", batching=Batching())
    with pytest.raises(ValueError, match="cannot be summed in parts"):
        w.handle(ModelSeen(announcement()), 0.0)


def test_a_worker_refuses_a_chunk_frame_since_a_shared_subscription_splits_chunks() -> None:
    from protocol.chunks import MIN_MAX_PAYLOAD, split

    w = worker("w1")
    parts = split(bytes(4 * MIN_MAX_PAYLOAD), MIN_MAX_PAYLOAD)  # any large payload
    assert parts is not None
    _manifest, frames = parts
    refused = w.handle(UpdateArrived("a0", frames[0]), 1.0)
    (rejected,) = [a for a in refused if isinstance(a, MessageRejected)]
    assert rejected.reason is RejectReason.MALFORMED and "whole updates" in rejected.detail


def test_a_site_follows_a_hashed_cohort() -> None:
    """A hashed announcement (docs/PROTOCOL.md §17): the site waits only for its agents that
    pass, and refuses one that fails as the coordinator would (`not_in_cohort`)."""
    rule = CohortHash(1 << 63)  # a fraction 0.5
    inside = [a for a in AGENTS if in_cohort(rule, "j", "run1", 1, a)]
    outside = [a for a in AGENTS if a not in inside]
    assert inside and outside
    site = SiteAggregator(config(), site="site-a")
    for a in AGENTS:
        site.handle(PresenceArrived(a, encode_presence(Presence(agent=a, online=True))), 0.0)
    site.handle(ModelSeen(encode_model(ModelAnnouncement(
        job="j", run="run1", round=1, model_id=MODEL_ID, task="t", plan=TrainPlan(),
        codec="none", deadline_s=10.0, weights=WEIGHTS, cohort_hash=rule))), 0.0)
    refused = site.handle(UpdateArrived(outside[0], update_bytes(outside[0])), 1.0)
    assert [a.reason for a in refused if isinstance(a, MessageRejected)] == [
        RejectReason.NOT_IN_COHORT]
    actions: list[Any] = []
    for a in inside:
        actions = site.handle(UpdateArrived(a, update_bytes(a)), 1.0)
    (payload,) = partials(actions)  # sent once every agent that passes answered
    assert decode_partial(payload, 1 << 20).agents == set(inside)
