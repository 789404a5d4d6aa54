"""The cohort: which of the agents online a round asks to train.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017: each round asks a random fraction C of
    the clients.

Invariants: candidates are only agents the round machine knows to be online
(and eligible: provisioned, of an allowed device class), so an offline agent is
never asked; the draw is the rule of :mod:`protocol.cohort` (a seeded hash of
run, round and agent), a function of the candidates, the size, the policy and
the seed alone, so a seed reproduces every cohort of a run, resumed or not, and
the announcement carries the rule, not the names: its size does not grow with
the fleet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

from coordinator.config import RoundConfig
from coordinator.open_round import OpenRound
from protocol import CohortRule, Presence, RejectReason, WireError, decode_presence
from protocol.cohort import draw, everyone


class Roster:
    """Who is online: each agent's last presence, and the ids whose presence says online.

    The status after every accepted update counts the agents online, so the count is
    kept in step with the presences rather than computed (it must not cost O(agents)).
    """

    def __init__(self) -> None:
        self.presences: dict[str, Presence] = {}
        self.online: set[str] = set()

    def apply(self, agent: str, payload: bytes) -> None:
        """Take ``agent``'s presence message; an empty payload is a cleared retained one.

        Raises:
            WireError: for a presence that does not decode or names another agent.
        """
        if not payload:
            self.presences.pop(agent, None)
            self.online.discard(agent)
            return
        presence = decode_presence(payload)
        if presence.agent != agent:
            raise WireError(RejectReason.AGENT_MISMATCH, f"presence names {presence.agent!r}")
        self.presences[agent] = presence
        if presence.online:
            self.online.add(agent)
        else:
            self.online.discard(agent)

    def alive(self, agent: str) -> None:
        """Proof of life: an accepted update. After a broker restart an agent's last will
        (offline) can come before its re-sent update and its new presence; it must stay
        in the next cohort."""
        self.online.add(agent)


class CohortPolicy:
    """Who may take part (provisioned, of an allowed device class) and whom a round asks."""

    def __init__(self, config: RoundConfig) -> None:
        self._config = config

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
        else:
            return eligible
        return min(eligible, max(want, cfg.cohort_floor))

    def draw(
        self,
        candidates: frozenset[str],
        size: int,
        presences: Mapping[str, Presence],
        *,
        run: str,
        round_no: int,
        keep: frozenset[str] = frozenset(),
    ) -> tuple[frozenset[str], CohortRule | None]:
        """``keep`` and ``size`` more of ``candidates``, and the rule announcing them (None
        when a round asks every agent online)."""
        cfg = self._config
        if not cfg.names_cohort:
            return keep | candidates, None
        devices = tuple(sorted(cfg.device_classes)) if cfg.device_classes is not None else None
        if cfg.sample_fraction is None and cfg.sample_count is None:
            return keep | candidates, everyone(devices)  # a device-class filter alone
        offered = {a: p.samples if (p := presences.get(a)) else None for a in candidates}
        return draw(offered, size, seed=cfg.sample_seed, run=run, round_no=round_no,
                    by_samples=cfg.sample_policy == "by-samples", keep=keep, devices=devices)

    def top_up(
        self, rs: OpenRound, online: frozenset[str], presences: Mapping[str, Presence], run: str
    ) -> None:
        """Set a retried round's cohort (and its rule): with a drawn cohort, topped up to its
        size with eligible agents not asked yet, in place of those that declined or went
        offline (silent ones still online may yet answer); otherwise every eligible agent
        online. The eligible agents join the round's pool (DP's sampling rate)."""
        eligible = self.eligible(online, presences)
        rs.pool |= eligible
        waiting = (rs.cohort - rs.answered) & eligible
        short = rs.cohort_target - len(rs.accepted) - len(waiting)
        rs.cohort, rs.cohort_rule = self.draw(
            eligible - rs.cohort, short, presences, run=run, round_no=rs.number, keep=rs.cohort
        )
