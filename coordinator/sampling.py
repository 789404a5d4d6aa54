"""Client sampling: which of the agents online a round asks to train.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017: each round asks a random fraction C of
    the clients.

Invariants: candidates are only agents the round machine knows to be online
(and eligible: provisioned, of an allowed device class), so an offline agent is
never asked; the draw is a function of the candidate set, the size, the policy
and the seed words alone (candidates are sorted first), so a seed reproduces
every cohort of a run, resumed or not.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


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
