"""The bounded hand-off from paho's network thread to the thread that owns a core.

paho calls back on its own thread; a callback must only copy what arrived and
return (docs/ARCHITECTURE.md). Three ways in:

- :meth:`Inbox.push` for messages from the broker, bounded in bytes: a message
  counts from its arrival until the owner :meth:`~Inbox.release`\\ s it after
  handling it. When the bytes held would exceed ``max_bytes``, paho's thread
  waits for room (backpressure: it reads nothing more from the socket, the broker
  holds what follows). Nothing is dropped, and with manual acknowledgement
  (:class:`transport.link.Link`) nothing is acknowledged before it is handled.
- :meth:`Inbox.offer` for small notices (connected, refused): never blocks;
  when ``maxsize`` items wait, the notice is counted and logged as dropped.
- :meth:`Inbox.put` for results of the owner's own worker threads: waits for room,
  because a finished training round must never be lost.

:meth:`Inbox.close` releases a waiting paho thread when the owner stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("fedmq.transport")


class Inbox(Generic[T]):
    """A FIFO of items for one owner thread (named ``owner`` in logs)."""

    def __init__(self, maxsize: int, owner: str, max_bytes: int = 256 * 1024 * 1024) -> None:
        if maxsize < 1 or max_bytes < 1:
            raise ValueError(f"an inbox holds at least one item and byte, got {maxsize}, "
                             f"{max_bytes}")
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._maxsize = maxsize
        self._owner = owner
        self.max_bytes = max_bytes
        self._held = 0
        self._closed = False
        #: notices refused because the inbox was full, and messages pushed after close
        self.dropped = 0
        #: how many times, and for how long in all, paho's thread waited for room
        self.stalls = 0
        self.stalled_s = 0.0

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def held_bytes(self) -> int:
        """Bytes of pushed messages not yet released by the owner."""
        with self._cond:
            return self._held

    def push(self, item: T, size: int) -> bool:
        """Add a broker message of ``size`` bytes, waiting while the bytes held are over
        ``max_bytes`` (one message is always let in, however large). False once closed."""
        with self._cond:
            if self._held and self._held + size > self.max_bytes and not self._closed:
                self.stalls += 1
                began = time.monotonic()
                self._cond.wait_for(
                    lambda: self._closed or not self._held or self._held + size <= self.max_bytes
                )
                self.stalled_s += time.monotonic() - began
            if self._closed:
                self.dropped += 1
                return False
            self._held += size
            self._items.append(item)
            self._cond.notify_all()
            return True

    def release(self, size: int) -> None:
        """The owner has handled a pushed message of ``size`` bytes: make room for more."""
        with self._cond:
            self._held = max(0, self._held - size)
            self._cond.notify_all()

    def offer(self, item: T) -> bool:
        """Add a notice if there is room (from a paho callback); False if it was dropped."""
        with self._cond:
            if len(self._items) >= self._maxsize:
                self.dropped += 1
                log.error("%s: inbound queue full (%d); dropped a notice", self._owner,
                          self._maxsize)
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def put(self, item: T) -> None:
        """Add ``item``, waiting for room: for results the owner must not lose."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < self._maxsize or self._closed)
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The next item; None if ``timeout`` seconds pass first (None: wait for ever)."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout=timeout):
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """The owner is stopping: wake a waiting paho thread; later pushes are dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
