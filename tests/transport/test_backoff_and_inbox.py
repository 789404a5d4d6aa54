"""The transport's pure parts: jittered reconnect delays, and the inbox bounded in bytes."""

from __future__ import annotations

import random
import threading

import pytest

from transport.backoff import Backoff
from transport.inbox import Inbox


def test_delays_double_to_the_cap_each_drawn_from_its_upper_half() -> None:
    backoff = Backoff(min_s=1.0, max_s=30.0, rng=random.Random(0))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [1, 2, 4, 8, 16, 30, 30, 30]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_a_fleet_lost_at_once_does_not_come_back_at_once() -> None:
    # Before: paho's own doubling, the same 1, 2, 4 ... s for every client of a fleet.
    fleet = [Backoff(rng=random.Random(seed)) for seed in range(10_000)]
    first = sorted(b.next_delay() for b in fleet)
    assert first[0] >= 0.5 and first[-1] <= 1.0
    # spread over the half-second window: no tenth of it holds more than a fifth of the fleet
    buckets = [sum(1 for d in first if 0.5 + k / 20 <= d < 0.5 + (k + 1) / 20) for k in range(10)]
    assert max(buckets) < 2_000 and len(set(first)) > 9_000


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(min_s=0.0)
    with pytest.raises(ValueError):
        Backoff(min_s=5.0, max_s=1.0)


def test_the_inbox_holds_at_most_its_bytes_until_the_owner_releases_them() -> None:
    inbox: Inbox[str] = Inbox(100, "test", max_bytes=1000)
    assert inbox.push("a", 600) and inbox.push("b", 400)  # 1000 bytes: full
    assert inbox.held_bytes == 1000
    third_in = threading.Event()

    def paho_thread() -> None:
        inbox.push("c", 300)  # must wait: taken from the socket only once there is room
        third_in.set()

    waiter = threading.Thread(target=paho_thread)
    waiter.start()
    assert inbox.get(0) == "a"  # taken is not handled: its bytes still count
    assert not third_in.wait(0.2)
    inbox.release(600)  # handled (and acknowledged): now there is room
    assert third_in.wait(5)
    waiter.join(5)
    assert [inbox.get(0), inbox.get(0)] == ["b", "c"]
    assert inbox.held_bytes == 700 and inbox.dropped == 0 and inbox.stalls == 1


def test_one_message_larger_than_the_budget_still_gets_in_and_close_frees_a_waiter() -> None:
    inbox: Inbox[str] = Inbox(100, "test", max_bytes=10)
    assert inbox.push("huge", 10_000)  # alone in the inbox: never stuck for ever
    released = threading.Event()
    result: list[bool] = []

    def paho_thread() -> None:
        result.append(inbox.push("next", 5))
        released.set()

    threading.Thread(target=paho_thread).start()
    assert not released.wait(0.2)
    inbox.close()  # the owner stops: the waiting callback returns, the message is dropped
    assert released.wait(5) and result == [False] and inbox.dropped == 1
