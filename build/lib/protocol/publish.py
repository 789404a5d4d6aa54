"""The one output both sans-I/O cores share: bytes for a topic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` on ``topic`` at QoS 1."""

    topic: str
    payload: bytes
    retain: bool
