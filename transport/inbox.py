"""The bounded hand-off from paho's network thread to the thread that owns a core.

paho calls back on its own thread; a callback must only copy what arrived and
return (docs/ARCHITECTURE.md). :meth:`Inbox.offer` never blocks: when the inbox
is full the message is counted and logged as dropped. Results of the owner's
own worker threads go in with :meth:`Inbox.put`, which waits for room, because a
finished training round must never be lost.
"""

from __future__ import annotations

import logging
import queue
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("fedmq.transport")


class Inbox(Generic[T]):
    """A bounded FIFO of items for one owner thread (named ``owner`` in logs)."""

    def __init__(self, maxsize: int, owner: str) -> None:
        if maxsize < 1:
            raise ValueError(f"an inbox holds at least one item, got maxsize={maxsize}")
        self._queue: queue.Queue[T] = queue.Queue(maxsize)
        self._owner = owner
        #: items refused because the inbox was full
        self.dropped = 0

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def offer(self, item: T) -> bool:
        """Add ``item`` if there is room (from a paho callback); False if it was dropped."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.error("%s: inbound queue full (%d); dropped a message", self._owner, self.maxsize)
            return False
        return True

    def put(self, item: T) -> None:
        """Add ``item``, waiting for room: for results the owner must not lose."""
        self._queue.put(item)

    def get(self, timeout: float | None = None) -> T | None:
        """The next item; None if ``timeout`` seconds pass first (None: wait for ever)."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
