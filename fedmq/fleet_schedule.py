"""Heterogeneous simulated fleets: each agent's speed class and when it is online.

The delay is the experiment. Simulated agents on one machine all train at the same
speed; what makes agent ``i`` a slow device is an artificial wait of
``(speed - 1) * base_delay_s`` after each training, ``speed = speeds[i % len(speeds)]``
(e.g. ``--speeds 1,3,10``), so a class-10 agent takes nine base delays longer than a
class-1 agent whatever the machine. What makes it an unreliable one: a seeded
``offline_fraction`` of the agents alternate online and offline periods, each drawn
from an exponential distribution with mean ``on_s`` or ``off_s``; every agent starts
online, so a run that waits for its agents can begin. Nothing else differs between
agents: a figure measured on such a fleet is a figure about that schedule.

Pure and seeded: ``now`` is seconds since the fleet started, passed in; the same
spec gives the same schedule for every order of questions. :class:`ScheduledFleet`
(:mod:`fedmq.fleet_driver`) carries it out for the demo's ``fedmq agents``, the bench
harness and the swarm.
"""

from __future__ import annotations

import argparse
import bisect
import math
from dataclasses import dataclass

import numpy as np


def parse_speeds(text: str) -> tuple[float, ...]:
    """``"1,3,10"`` -> ``(1.0, 3.0, 10.0)``; each class >= 1 (1: no delay).

    Raises:
        ValueError: for an empty list or a class below 1 or not finite.
    """
    speeds = tuple(float(s) for s in text.split(",") if s.strip())
    if not speeds or not all(math.isfinite(s) and s >= 1 for s in speeds):
        raise ValueError(f"speed classes {text!r}: want numbers >= 1, e.g. 1,3,10")
    return speeds


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """A fleet's unevenness (see the module docstring)."""

    speeds: tuple[float, ...] = (1.0,)
    base_delay_s: float = 0.0
    offline_fraction: float = 0.0
    on_s: float = 10.0
    off_s: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.speeds or not all(math.isfinite(s) and s >= 1 for s in self.speeds):
            raise ValueError("speed classes must be >= 1")
        if not 0 <= self.base_delay_s < math.inf:
            raise ValueError(f"base delay must be >= 0 s, got {self.base_delay_s}")
        if not 0 <= self.offline_fraction <= 1:
            raise ValueError(f"offline fraction must be in [0, 1], got {self.offline_fraction}")
        if not (0 < self.on_s < math.inf and 0 < self.off_s < math.inf):
            raise ValueError("on and off periods must be > 0 s")

    @property
    def uneven(self) -> bool:
        """True if any agent is slowed down or goes offline."""
        return (self.base_delay_s > 0 and max(self.speeds) > 1) or self.offline_fraction > 0


class FleetSchedule:
    """Who is how slow, and who is online when, for a fleet of ``agents``."""

    def __init__(self, spec: FleetSpec, agents: int) -> None:
        if agents < 0:
            raise ValueError("agents must be >= 0")
        self.spec, self.agents = spec, agents
        pick = np.random.default_rng([spec.seed, 0])
        flaky = round(spec.offline_fraction * agents)
        self.flaky = frozenset(int(i) for i in pick.choice(agents, flaky, replace=False))
        self._rngs = {i: np.random.default_rng([spec.seed, 1, i]) for i in self.flaky}
        #: each flaky agent's change times, ascending: offline at the 1st, online at the 2nd..
        self._edges: dict[int, list[float]] = {i: [] for i in self.flaky}

    def speed(self, agent: int) -> float:
        return self.spec.speeds[agent % len(self.spec.speeds)]

    def delay_s(self, agent: int) -> float:
        """The artificial wait after each of ``agent``'s trainings."""
        return (self.speed(agent) - 1) * self.spec.base_delay_s

    def online(self, agent: int, now: float) -> bool:
        """Whether ``agent`` is online ``now`` seconds after the fleet started."""
        if agent not in self.flaky:
            return True
        edges = self._until(agent, now)
        return bisect.bisect_right(edges, now) % 2 == 0

    def next_change(self, agent: int, now: float) -> float | None:
        """When ``agent`` next goes offline or comes back (None: it never does)."""
        if agent not in self.flaky:
            return None
        edges = self._until(agent, now)
        return edges[bisect.bisect_right(edges, now)]

    def offline(self, now: float) -> frozenset[int]:
        return frozenset(i for i in self.flaky if not self.online(i, now))

    def _until(self, agent: int, now: float) -> list[float]:
        """``agent``'s edges, drawn in order until one lies beyond ``now``."""
        edges, rng = self._edges[agent], self._rngs[agent]
        while not edges or edges[-1] <= now:
            mean = self.spec.on_s if len(edges) % 2 == 0 else self.spec.off_s
            edges.append((edges[-1] if edges else 0.0) + float(rng.exponential(mean)))
        return edges


def add_fleet_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("uneven fleet: the delay is the experiment (docs/STRATEGIES.md)")
    g.add_argument("--speeds", type=parse_speeds, default=(1.0,), metavar="C,C,..",
                   help="speed classes, agent i of class C[i %% n], e.g. 1,3,10 (default: 1)")
    g.add_argument("--base-delay", type=float, default=0.0, metavar="S",
                   help="a class-C agent waits (C - 1) * S seconds after each training")
    g.add_argument("--offline-fraction", type=float, default=0.0, metavar="F",
                   help="this share of agents (seeded) goes offline and back at random")
    g.add_argument("--on-s", type=float, default=10.0, help="their mean online period")
    g.add_argument("--off-s", type=float, default=5.0, help="their mean offline period")
    g.add_argument("--fleet-seed", type=int, default=0, help="seeds who is flaky and when")


def fleet_spec(args: argparse.Namespace) -> FleetSpec:
    try:
        return FleetSpec(speeds=tuple(args.speeds), base_delay_s=args.base_delay,
                         offline_fraction=args.offline_fraction, on_s=args.on_s,
                         off_s=args.off_s, seed=args.fleet_seed)
    except ValueError as exc:
        raise SystemExit(f"fedmq: {exc}") from None


def fleet_argv(args: argparse.Namespace) -> list[str]:
    """The fleet flags again, for a child ``fedmq agents`` (the demo's)."""
    return spec_argv(fleet_spec(args))


def spec_argv(spec: FleetSpec) -> list[str]:
    """The flags that give ``spec`` to a child process (none for an even fleet)."""
    if not spec.uneven:
        return []
    return ["--speeds", ",".join(f"{s:g}" for s in spec.speeds), "--base-delay",
            str(spec.base_delay_s), "--offline-fraction", str(spec.offline_fraction),
            "--on-s", str(spec.on_s), "--off-s", str(spec.off_s),
            "--fleet-seed", str(spec.seed)]
