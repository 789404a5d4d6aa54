"""Reconnect delays: exponential, capped, and jittered so a fleet does not reconnect in step.

References:
    Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015: with
    every client on the same doubling schedule, a broker restart brings the
    whole fleet back in synchronised waves; a random share of each delay spreads them.

Pure: the caller owns the random generator (seed it in tests) and the clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: seconds: the first delay's ceiling, and every delay's
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0


@dataclass(slots=True)
class Backoff:
    """Delays that double from ``min_s`` to ``max_s``, each drawn from its upper half.

    "Equal jitter": delay n is uniform in [c/2, c] with c = min(max_s, min_s * 2**n),
    so a client never retries sooner than half the schedule, and 10,000 clients
    lost at the same instant come back spread over half the window.
    """

    min_s: float = RECONNECT_MIN_S
    max_s: float = RECONNECT_MAX_S
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"need 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = min(self.max_s, self.min_s * 2.0 ** min(self.attempt, 62))
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Connected: the next loss starts again from ``min_s``."""
        self.attempt = 0
