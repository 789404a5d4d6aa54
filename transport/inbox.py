"""The bounded hand-off from paho's network thread to the thread that owns a core.

paho calls back on its own thread; a callback must only copy what arrived and
return (docs/ARCHITECTURE.md). :meth:`Inbox.offer` never blocks: when the inbox
is full, by item count or by the bytes it holds, the message is counted and
logged as dropped, so an owner that falls behind never holds more than its
bound of unvalidated bytes. Results of the owner's own worker threads go in
with :meth:`Inbox.put`, which waits for room, because a finished training
round must never be lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("fedmq.transport")


class Inbox(Generic[T]):
    """A bounded FIFO of items for one owner thread (named ``owner`` in logs).

    ``max_bytes`` bounds the sizes given to :meth:`offer` of the items held
    (None: only ``maxsize`` items).
    """

    def __init__(self, maxsize: int, owner: str, max_bytes: int | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"an inbox holds at least one item, got maxsize={maxsize}")
        self._queue: queue.Queue[tuple[T, int]] = queue.Queue(maxsize)
        self._owner = owner
        self._max_bytes = max_bytes
        self._held = 0
        self._lock = threading.Lock()
        #: items refused because the inbox was full
        self.dropped = 0

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    @property
    def held_bytes(self) -> int:
        """The sizes of the items now held, as given to :meth:`offer`."""
        return self._held

    def offer(self, item: T, size: int = 0) -> bool:
        """Add ``item`` of ``size`` bytes if there is room (from a paho callback); False
        if it was dropped."""
        with self._lock:
            over = self._max_bytes is not None and self._held + size > self._max_bytes
            if not over:
                try:
                    self._queue.put_nowait((item, size))
                except queue.Full:
                    over = True
                else:
                    self._held += size
            if over:
                self.dropped += 1
        if over:
            log.error("%s: inbound queue full (%d items, %d bytes held); dropped a message",
                      self._owner, self._queue.qsize(), self._held)
        return not over

    def put(self, item: T) -> None:
        """Add ``item``, waiting for room: for results the owner must not lose."""
        self._queue.put((item, 0))

    def get(self, timeout: float | None = None) -> T | None:
        """The next item; None if ``timeout`` seconds pass first (None: wait for ever)."""
        try:
            item, size = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self._held -= size
        return item
