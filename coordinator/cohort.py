"""The cohort: which of the agents online a round asks to train, and the round it opens.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017: each round asks a random fraction C of
    the clients.

Invariants: candidates are only agents the round machine knows to be online
(and eligible: provisioned, of an allowed device class), so an offline agent is
never asked; the draw is a function of the candidate set, the size, the policy
and the seed words alone (candidates are sorted first), so a seed reproduces
every cohort of a run, resumed or not. A hashed cohort (docs/PROTOCOL.md §17) is
the eligible agents that pass the announced hash, so every agent can check itself
and the announcement names no one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction

import numpy as np

from coordinator.aggregate import Aggregator
from coordinator.config import RoundConfig
from coordinator.open_round import OpenRound
from coordinator.roster import Roster
from protocol import Presence
from protocol.cohort_hash import in_cohort


def select_cohort(
    candidates: Mapping[str, int | None], size: int, policy: str, rng: np.random.Generator
) -> frozenset[str]:
    """``size`` distinct agents drawn from ``candidates`` (id -> advertised sample count).

    ``uniform`` gives every candidate the same chance; ``by-samples`` draws in
    proportion to the advertised sample count (an agent that advertises none, or
    zero, weighs 1), so data-rich devices are asked more often. Asking for at
    least as many as there are returns them all.
    """
    ids = sorted(candidates)
    if size >= len(ids):
        return frozenset(ids)
    if size <= 0:
        return frozenset()
    if policy == "by-samples":
        weights = np.array([max(candidates[a] or 0, 1) for a in ids], np.float64)
        chosen = rng.choice(len(ids), size=size, replace=False, p=weights / weights.sum())
    else:
        chosen = rng.choice(len(ids), size=size, replace=False)
    return frozenset(ids[int(i)] for i in chosen)


class CohortPolicy:
    """Who may take part (provisioned, of an allowed device class) and whom a round asks."""

    def __init__(self, config: RoundConfig, run: str = "") -> None:
        """``run``: the run id a hashed cohort hashes (unused otherwise)."""
        self._config = config
        self._run = run

    def hashed(self, eligible: frozenset[str], round_no: int) -> frozenset[str]:
        """The agents of ``eligible`` that pass round ``round_no``'s hash (all of them when
        cohorts are not hashed)."""
        rule = self._config.cohort_hash
        if rule is None:
            return eligible
        job = self._config.job
        return frozenset(a for a in eligible if in_cohort(rule, job, self._run, round_no, a))

    def enough(self, roster: Roster, needed: int) -> bool:
        """Whether at least ``needed`` agents online are eligible. A fleet announcing itself
        asks this once per presence: while fewer are online it costs nothing."""
        online = roster.online
        return len(online) >= needed and len(
            self.eligible(frozenset(online), roster.presences)) >= needed

    def eligible(
        self, online: frozenset[str], presences: Mapping[str, Presence]
    ) -> frozenset[str]:
        """The agents of ``online`` that may be asked at all."""
        allowed, devices = self._config.allowed_agents, self._config.device_classes
        eligible = online if allowed is None else online & allowed
        if devices is None:
            return eligible
        return frozenset(
            a for a in eligible if (p := presences.get(a)) is not None and p.device in devices
        )

    def size(self, eligible: int) -> int:
        """How many of ``eligible`` agents a round asks: the sampled share, never fewer
        than a round needs to close (``cohort_floor``), never more than there are."""
        cfg = self._config
        if cfg.sample_fraction is not None:
            want = math.ceil(Fraction(str(cfg.sample_fraction)) * eligible)
        elif cfg.sample_count is not None:
            want = cfg.sample_count
        elif cfg.over_select is not None and cfg.quorum is not None:  # coordinator/stragglers.py
            want = math.ceil(Fraction(str(cfg.over_select)) * cfg.quorum)
        else:
            return eligible
        return min(eligible, max(want, cfg.cohort_floor))

    def draw(
        self,
        candidates: frozenset[str],
        size: int,
        presences: Mapping[str, Presence],
        round_no: int,
        attempt: int,
    ) -> frozenset[str]:
        """``size`` of ``candidates``, drawn with the run's seed for this round and attempt."""
        cfg = self._config
        rng = np.random.default_rng([cfg.sample_seed, round_no, attempt])
        offered = {a: p.samples if (p := presences.get(a)) else None for a in candidates}
        return select_cohort(offered, size, cfg.sample_policy, rng)

    def open(
        self,
        number: int,
        eligible: frozenset[str],
        presences: Mapping[str, Presence],
        now: float,
        *,
        aggregator: Callable[[int, int], Aggregator],
    ) -> OpenRound:
        """Round ``number`` as it opens: its cohort drawn from ``eligible``, its quorum (the
        configured one, else every agent asked), its deadline, and a fresh
        ``aggregator(round, cohort size)``."""
        cfg = self._config
        if cfg.cohort_hash is not None:
            cohort = self.hashed(eligible, number)
            target = len(cohort)
        else:
            target = self.size(len(eligible))
            cohort = self.draw(eligible, target, presences, number, 0)
        quorum = cfg.quorum if cfg.quorum is not None else max(len(cohort), cfg.min_replies)
        return OpenRound(
            number=number,
            attempt=0,
            opened_at=now,
            deadline=now + cfg.deadline_s,
            deadline_s=cfg.deadline_s,
            cohort=cohort,
            quorum=quorum,
            aggregator=aggregator(number, len(cohort)),
            cohort_target=target,
            pool=set(eligible),
        )

    def retry(
        self, rs: OpenRound, eligible: frozenset[str], presences: Mapping[str, Presence],
        now: float,
    ) -> None:
        """Re-open ``rs`` for its next attempt: a deadline ``retry_backoff`` times longer,
        and its cohort topped up from ``eligible``."""
        cfg = self._config
        rs.attempt += 1
        rs.deadline_s = cfg.deadline_s * cfg.retry_backoff**rs.attempt
        rs.deadline = now + rs.deadline_s
        rs.pool |= eligible
        rs.cohort = self.top_up(rs, eligible, presences)

    def top_up(
        self, rs: OpenRound, eligible: frozenset[str], presences: Mapping[str, Presence]
    ) -> frozenset[str]:
        """A retried round's cohort: with a drawn cohort, topped up to its size with agents
        not asked yet, in place of those that declined or went offline (silent ones still
        online may yet answer); hashed, every eligible agent online that passes; otherwise
        every eligible agent online."""
        if not self._config.names_cohort:
            return rs.cohort | self.hashed(eligible, rs.number)
        waiting = (rs.cohort - rs.answered) & eligible
        short = rs.cohort_target - len(rs.accepted) - len(waiting)
        newcomers = self.draw(eligible - rs.cohort, short, presences, rs.number, rs.attempt)
        return rs.cohort | newcomers
