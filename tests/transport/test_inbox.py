"""The bounded hand-off from paho's thread: a count bound and a byte bound, both counted."""

from __future__ import annotations

import threading

from transport.inbox import Inbox


def test_the_byte_bound_drops_what_would_exceed_it_and_counts_it() -> None:
    inbox: Inbox[bytes] = Inbox(100, "coordinator", max_bytes=1000)
    assert inbox.offer(b"a" * 600, size=600)
    assert not inbox.offer(b"b" * 500, size=500)  # 1100 bytes would be held
    assert inbox.offer(b"c" * 400, size=400)  # exactly the bound
    assert (inbox.dropped, inbox.held_bytes) == (1, 1000)
    assert inbox.get() == b"a" * 600
    assert inbox.held_bytes == 400
    assert inbox.offer(b"d" * 600, size=600)  # room again once the owner took one


def test_one_item_larger_than_the_bound_is_never_held() -> None:
    inbox: Inbox[bytes] = Inbox(10, "coordinator", max_bytes=100)
    assert not inbox.offer(b"x" * 101, size=101)
    assert (inbox.dropped, inbox.held_bytes) == (1, 0)


def test_unsized_items_only_count_against_the_item_bound() -> None:
    inbox: Inbox[str] = Inbox(2, "agent", max_bytes=1)
    assert inbox.offer("connected") and inbox.offer("stop")
    assert not inbox.offer("one too many")
    assert (inbox.dropped, inbox.held_bytes) == (1, 0)


def test_the_byte_count_stays_exact_under_concurrent_offers_and_gets() -> None:
    inbox: Inbox[bytes] = Inbox(10_000, "coordinator", max_bytes=10**9)

    def producer() -> None:
        for _ in range(2000):
            assert inbox.offer(b"p" * 7, size=7)

    thread = threading.Thread(target=producer)
    thread.start()
    taken = 0
    for _ in range(2000):
        item = inbox.get()
        assert item is not None
        taken += len(item)
    thread.join()
    assert taken == 2000 * 7 and inbox.held_bytes == 0
