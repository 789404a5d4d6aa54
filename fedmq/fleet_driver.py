"""Carrying a :class:`~fedmq.fleet_schedule.FleetSchedule` out on real agents.

The thin I/O side of the pure schedule: :class:`ScheduledFleet` builds each agent
(with its speed class's delay), runs it on its own thread and connection, stops it
when the schedule takes it offline (it leaves as a device shutting down does: the
round in training is declined, presence goes ``offline``) and builds it anew, with
the same id, when the schedule brings it back. ``fedmq agents`` (and so the demo)
and ``fedmq bench hetero`` use it; the flags are
:func:`fedmq.fleet_schedule.add_fleet_flags`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from edge_agent.mqtt import AgentNode, run_fleet
from fedmq.fleet_schedule import FleetSchedule


class ScheduledFleet:
    """Agents ``indices`` (default: all of the schedule's) built by ``build(i, delay_s)``,
    online as ``schedule`` says; a fleet split over processes shares one schedule."""

    def __init__(self, schedule: FleetSchedule, build: Callable[[int, float], AgentNode],
                 indices: Sequence[int] | None = None) -> None:
        self._schedule, self._build = schedule, build
        self._indices = list(range(schedule.agents) if indices is None else indices)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.current: dict[int, AgentNode] = {}
        #: every node built, in order: the offline ones' counters stay readable
        self.built: list[AgentNode] = []
        self._threads: list[threading.Thread] = []
        self._driver = threading.Thread(target=self._drive, name="fleet-schedule", daemon=True)
        #: (seconds since start, agent, online) for each change carried out
        self.changes: list[tuple[float, int, bool]] = []

    def start(self) -> None:
        self._started = time.monotonic()
        for i in self._indices:
            self._bring_up(i)
        self._driver.start()

    def stop(self) -> None:
        """Stop cycling and take every agent offline; safe from any thread."""
        self._halt.set()
        with self._lock:
            for node in self.current.values():
                node.stop()

    def join(self, timeout: float | None = None) -> None:
        self._driver.join(timeout)
        for thread in list(self._threads):
            thread.join(timeout)

    @property
    def run_finished(self) -> bool:
        return any(node.finished.is_set() for node in self.built)

    def _bring_up(self, i: int) -> None:
        node = self._build(i, self._schedule.delay_s(i))
        with self._lock:
            if self._halt.is_set():  # stop() came first: this one never starts
                return
            self.current[i] = node
            self.built.append(node)
            self._threads.extend(run_fleet([node]))

    def _drive(self) -> None:
        flaky = sorted(self._schedule.flaky & set(self._indices))
        while flaky and not self._halt.is_set() and not self.run_finished:
            now = time.monotonic() - self._started
            nxt = min(t for i in flaky if (t := self._schedule.next_change(i, now)) is not None)
            if self._halt.wait(max(nxt - now, 0.0)):
                return
            now = time.monotonic() - self._started
            for i in flaky:
                self._follow(i, now)

    def _follow(self, i: int, now: float) -> None:
        want, node = self._schedule.online(i, now), self.current.get(i)
        if want and node is None:
            self._bring_up(i)
        elif not want and node is not None:
            with self._lock:
                del self.current[i]
            node.stop()
        else:
            return
        self.changes.append((round(now, 3), i, want))
