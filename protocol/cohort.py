"""The cohort rule: which agents a round asks, decidable by each agent on its own.

References:
    Duffield, Lund and Thorup, "Priority sampling for estimation of arbitrary
    subset sums", JACM 54(6), 2007: give item i the priority w_i / u_i for a
    uniform u_i in (0, 1] and keep the k highest; the k-th priority is the cut.

Here ``u`` is a hash, so anyone can compute it: ``rank`` is the first 8 bytes of
SHA-256 over (seed, run, round, agent), and the priority ``weight / (rank + 1)``
is compared with the announced cut, the (weight, rank) of the lowest-priority agent
asked, by exact integer cross-multiplication (all values fit 64 bits), so the
coordinator and an agent written in any language agree on every agent. With
every weight 1 the k agents of lowest rank are a uniform sample without
replacement; weighted by advertised sample counts, data-rich agents are asked
more often. The announcement carries the cut, a few integers, whatever the
fleet's size (docs/PROTOCOL.md §9). Pure and deterministic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from fractions import Fraction

from protocol.messages import CohortRule

#: hashed in front of every rank, so a rank is never a digest of something else
RANK_DOMAIN = "fedmq-cohort/v1"
#: ranks are 64-bit: 0 .. RANK_MAX
RANK_MAX = (1 << 64) - 1


def cohort_rank(seed: int, run: str, round_no: int, agent: str) -> int:
    """``agent``'s 64-bit rank in round ``round_no`` of ``run``: its hashed lottery ticket."""
    text = f"{RANK_DOMAIN}|{seed}|{run}|{round_no}|{agent}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def cohort_weight(by_samples: bool, samples: int | None) -> int:
    """An agent's weight: 1, or its advertised sample count (at least 1) ``by_samples``."""
    return max(samples or 0, 1) if by_samples else 1


def names(
    rule: CohortRule, *, run: str, round_no: int, agent: str, samples: int | None,
    device: str | None,
) -> bool:
    """Whether ``rule`` names ``agent`` (advertising ``samples`` and ``device``)."""
    if rule.devices is not None and device not in rule.devices:
        return False
    weight = cohort_weight(rule.by_samples, samples)
    rank = cohort_rank(rule.seed, run, round_no, agent)
    return weight * (rule.cut_rank + 1) >= rule.cut_weight * (rank + 1)


def draw(
    candidates: Mapping[str, int | None],
    size: int,
    *,
    seed: int,
    run: str,
    round_no: int,
    by_samples: bool,
    keep: frozenset[str] = frozenset(),
    devices: tuple[str, ...] | None = None,
) -> tuple[frozenset[str], CohortRule]:
    """``keep`` plus the ``size`` highest-priority ``candidates`` (id -> advertised
    samples) not in it, and the rule that names them: its cut is the lowest priority
    among them. Asking for at least as many as there are takes them all.
    """
    def ticket(agent: str) -> tuple[int, int]:
        return cohort_weight(by_samples, candidates.get(agent)), cohort_rank(
            seed, run, round_no, agent
        )

    def priority(agent: str) -> Fraction:
        weight, rank = ticket(agent)
        return Fraction(weight, rank + 1)

    fresh = sorted((a for a in candidates if a not in keep), key=lambda a: (-priority(a), a))
    chosen = keep | frozenset(fresh[: max(size, 0)])
    if not chosen:  # a cut no weight reaches: names no one
        return chosen, CohortRule(seed, by_samples, RANK_MAX, 0, devices)
    weight, rank = ticket(min(chosen, key=priority))
    return chosen, CohortRule(seed, by_samples, weight, rank, devices)


def everyone(devices: tuple[str, ...] | None) -> CohortRule:
    """A rule naming every agent (of ``devices``): a device-class filter without sampling."""
    return CohortRule(seed=0, by_samples=False, cut_weight=0, cut_rank=0, devices=devices)


__all__ = ["RANK_MAX", "cohort_rank", "cohort_weight", "draw", "everyone", "names"]
