"""Who masks with whom: the complete graph (SecAgg) or a random Harary graph (SecAgg+).

References:
    Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
    (Poly)Logarithmic Overhead", CCS 2020, §3: replace the complete graph by a random
    k-regular graph (a Harary graph H(n, k) over a random ordering); each agent
    shares its secrets with, and masks against, its k neighbours only.

The ordering is portable: participants sorted by SHA-256(graph_seed || agent id),
then agent i of that order neighbours the k/2 agents on each side of it around the
circle. ``degree`` is even (H(n, k) for odd k needs a chord a circle cannot give
every node) or at least n - 1, which means the complete graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

Graph = Mapping[str, frozenset[str]]


def effective_degree(participants: int, degree: int | None) -> int:
    """The degree the graph really has: ``None`` or ``>= n - 1`` is the complete graph.

    Raises:
        ValueError: for an odd degree below n - 1, or one below 2.
    """
    if degree is None or degree >= participants - 1:
        return max(participants - 1, 0)
    if degree < 2 or degree % 2:
        raise ValueError(f"a SecAgg+ degree must be even and >= 2, got {degree}")
    return degree


def neighbours(participants: Sequence[str], degree: int, seed: bytes) -> dict[str, frozenset[str]]:
    """Each participant's neighbours (never itself) for :func:`effective_degree`'s degree."""
    n = len(participants)
    k = effective_degree(n, degree)
    if k >= n - 1:
        everyone = frozenset(participants)
        return {a: everyone - {a} for a in participants}
    order = sorted(participants, key=lambda a: hashlib.sha256(seed + a.encode()).digest())
    out: dict[str, frozenset[str]] = {}
    for i, agent in enumerate(order):
        around = (order[(i + d) % n] for d in range(-(k // 2), k // 2 + 1) if d)
        out[agent] = frozenset(around)
    return out


def connected(nodes: Collection[str], graph: Graph) -> bool:
    """Whether ``graph`` restricted to ``nodes`` is connected (true for no nodes).

    A coordinator that unmasks a disconnected set of survivors learns the partial
    sum of each component, so an agent refuses to unmask one (docs/SECURITY.md).
    """
    members = set(nodes)
    if not members:
        return True
    start = next(iter(members))
    seen, todo = {start}, [start]
    while todo:
        for peer in graph.get(todo.pop(), frozenset()):
            if peer in members and peer not in seen:
                seen.add(peer)
                todo.append(peer)
    return seen == members
