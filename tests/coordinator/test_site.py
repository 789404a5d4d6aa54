"""The site aggregator's core: it admits what the coordinator admits, and its partial merges."""

from __future__ import annotations

from typing import Any

from coordinator import MessageRejected, PartialArrived, PresenceArrived, Tick, UpdateArrived
from coordinator.site import ModelSeen, PartialSent, SiteAggregator
from protocol import (
    ModelAnnouncement,
    Presence,
    Publish,
    RejectReason,
    TrainPlan,
    encode_model,
    encode_presence,
)
from protocol.partial import decode_partial
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
