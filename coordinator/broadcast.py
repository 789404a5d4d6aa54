"""The broadcast model on the coordinator's side: the version agents hold, and its delta.

Without a delta codec every version is the global model as announced
(``narrow(G)``, float32 or float16) and travels whole. With one, each version is
one codec step from the last towards the global model, computed by
:func:`protocol.broadcast.encode_step` exactly as agents rebuild it, so what the
coordinator names by ``model_id`` is bit for bit what every agent holds
(docs/PROTOCOL.md §15). It also remembers which version each agent last answered
from, to count the bytes each one downloads.

Pure: no clock, no I/O; a checkpoint carries :meth:`Broadcast.state` so a resumed
coordinator continues the same chain of versions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from coordinator.checkpoint import BroadcastState
from coordinator.config import RoundConfig
from protocol import Presence, Weights, weights_digest
from protocol.broadcast import DTYPES, delta_rng, encode_step, narrow

log = logging.getLogger("fedmq.coordinator")


@dataclass(frozen=True, slots=True)
class Version:
    """One version of the broadcast model and the delta that leads to it."""

    weights: Weights
    model_id: str
    #: the version the delta applies to; None: this version travels whole only
    base_id: str | None = None
    #: the delta's entries, as the codec wrote them (empty without a base)
    entries: tuple[Mapping[str, Any], ...] = ()


class Broadcast:
    """The current version, how the next one is made, and who holds what."""

    def __init__(
        self, config: RoundConfig, global_weights: Weights, resume: BroadcastState | None = None
    ) -> None:
        """Start from ``narrow(global_weights)``, or from ``resume`` when it belongs to this
        configuration's delta codec and dtype (else the chain restarts whole)."""
        self.codec = config.downlink_delta
        self.dtype = DTYPES[config.downlink]
        self._seed = config.plan.seed
        self._holds: dict[str, str] = {}
        if resume is not None and (resume.codec, resume.dtype) == (self.codec, self.dtype):
            entries = tuple(msgpack.unpackb(resume.delta, raw=False)) if resume.delta else ()
            self.version = Version(
                resume.weights, weights_digest(resume.weights), resume.base_id, entries
            )
        else:
            self.version = self._whole(global_weights)

    def _whole(self, weights: Weights) -> Version:
        w = narrow(weights, self.dtype)
        return Version(w, weights_digest(w))

    def advance(self, target: Weights, version_no: int) -> None:
        """Make version ``version_no`` (the round that produced ``target``) towards ``target``."""
        if self.codec is None:
            self.version = self._whole(target)
            return
        prev = self.version
        try:
            entries, weights = encode_step(
                prev.weights, target, self.codec, self.dtype, delta_rng(self._seed, version_no)
            )
        except ValueError as exc:  # a diverged (non-finite) model: send it whole, as before
            log.error("version %d cannot travel as a delta (%s); sending it whole", version_no, exc)
            self.version = self._whole(target)
            return
        self.version = Version(weights, weights_digest(weights), prev.model_id, tuple(entries))

    def answered(self, agent: str, model_id: str) -> None:
        """``agent`` answered (an update or a decline) from the version ``model_id``."""
        self._holds[agent] = model_id

    def bytes_down(
        self, agents: Iterable[str], whole: int, delta: int, presences: Mapping[str, Presence]
    ) -> int:
        """What ``agents`` download for one announcement (docs/PROTOCOL.md §15.6): an agent
        whose presence says it takes deltas gets the delta topic's ``delta`` bytes, plus the
        ``whole`` model's unless it is known to hold the delta's base or this version; any
        other agent (one written before deltas, a browser) the whole model only."""
        v = self.version
        known = {v.base_id, v.model_id} - {None} if self.codec is not None else set()

        def cost(agent: str) -> int:
            presence = presences.get(agent)
            if presence is None or not presence.deltas:
                return whole
            return delta + (0 if self._holds.get(agent) in known else whole)

        return sum(cost(a) for a in agents)

    def state(self) -> BroadcastState | None:
        """What a checkpoint must keep to continue this chain; None without deltas."""
        if self.codec is None:
            return None
        v = self.version
        packed: bytes = msgpack.packb(list(v.entries), use_bin_type=True) if v.entries else b""
        return BroadcastState(self.codec, self.dtype, v.weights, v.base_id, packed)
