"""What an agent says about itself on ``agents/{agent}``: its presence, and its last will.

With an update key every presence is sealed for the agent's session, an id drawn
afresh for each agent process and the same in its will and its ``online``, so
the coordinator of the secure profile can count it and can tell a late will of
an earlier process from this one's (docs/PROTOCOL.md §16.1). Pure.
"""

from __future__ import annotations

from protocol import Presence, Publish, Topics, check_id, encode_presence
from protocol.keys import SigningKey
from protocol.signing import Purpose, seal

#: what this implementation announces as its presence ``kind`` (docs/PROTOCOL.md §4.3)
KIND = "python"


class Announcer:
    """One agent's presence documents, as retained publishes."""

    def __init__(
        self,
        topics: Topics,
        agent: str,
        *,
        samples: int,
        trainer: str,
        device: str | None,
        signing_key: SigningKey | None,
        session: str,
    ) -> None:
        self._topics, self._agent = topics, agent
        self._samples, self._trainer, self._device = samples, trainer, device
        self._key, self._session = signing_key, check_id(session, "session")

    def presence(self, online: bool, at: float) -> Publish:
        """``online`` or ``offline`` at ``at`` (Unix seconds; 0 in the last will)."""
        doc = Presence(
            agent=self._agent,
            online=online,
            samples=self._samples,
            trainer=self._trainer,
            device=self._device,
            at=at,
            kind=KIND,
            deltas=True,  # it follows .../delta (edge_agent/downlink.py)
        )
        payload = encode_presence(doc)
        if self._key is not None:
            payload = seal(payload, Purpose.PRESENCE, job=self._topics.job, run=self._session,
                           signer=self._agent, key=self._key)
        return Publish(self._topics.presence(self._agent), payload, retain=True)
