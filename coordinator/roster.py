"""Who the coordinator counts: each agent's last presence, the ids online, and the roll call.

Presence decides who is asked and how many answers close a round, so in the
secure profile (agent keys provisioned) it is trusted like an update: it must
be signed with the agent's update key (docs/SECURITY.md). Rules of this class:

1. A presence that is not accepted changes nothing; the caller counts the
   :class:`~protocol.WireError`. With keys, a bare or cleared presence is
   ``unsigned``: a device's password alone cannot take it out of aggregation.
2. A signed presence names the agent's session (one per agent process). An
   offline from another session than the agent's current one is ``stale``: the
   late last will of a process that has since restarted, or a replay.
3. An accepted update proves its agent alive whatever its presence said
   (:meth:`Roster.alive`).
4. An agent whose update was refused because it never announced itself is put
   on the roll call, which the next announcement names so that the agent
   announces itself again (docs/PROTOCOL.md, "Membership"); at most
   :data:`~protocol.fields.MAX_ROLL_CALL` at a time.
5. Each (re)connection of the coordinator starts a recount (:meth:`Roster.recount`):
   a broker shutting down sends every agent's last will, so who is online is known
   again only once they have reconnected and announced themselves; until a round
   opens, the caller holds the next round for ``--min-agents``, as after a resume.

The count of agents online is kept in step with the presences, not computed:
the status after every accepted update reports it and must not cost O(agents).
"""

from __future__ import annotations

from coordinator.config import RoundConfig
from protocol import Presence, RejectReason, WireError, check_agent_level, decode_presence
from protocol.fields import MAX_ROLL_CALL
from protocol.signing import open_presence


class Roster:
    """The agents' last presences, the ids online, and who to call on."""

    def __init__(self, config: RoundConfig) -> None:
        self._job = config.job
        self._keys = config.agent_keys
        self._allowed = config.allowed_agents
        self.presences: dict[str, Presence] = {}
        self.online: set[str] = set()
        #: each agent's current session: the one of its last signed online presence
        self._sessions: dict[str, str] = {}
        self._roll_call: set[str] = set()
        #: who is online is being learnt again (rule 5); a round opening ends it
        self.recounting = False

    def recount(self) -> None:
        """The coordinator (re)connected and asked for a roll call (rule 5)."""
        self.recounting = True

    def apply(self, agent: str, payload: bytes) -> None:
        """Take ``agent``'s presence message; an empty payload is a cleared retained one.

        Raises:
            WireError: for a presence refused (rules 1 and 2), on a topic level that is no
                agent id, that does not decode, or that names another agent.
        """
        check_agent_level(agent)
        if not payload:
            if self._keys is not None:
                raise WireError(RejectReason.UNSIGNED, "a cleared presence is not signed")
            self.presences.pop(agent, None)
            self.online.discard(agent)
            return
        body, session = open_presence(payload, job=self._job, agent=agent, keys=self._keys)
        presence = decode_presence(body)
        if presence.agent != agent:
            raise WireError(RejectReason.AGENT_MISMATCH, f"presence names {presence.agent!r}")
        current = self._sessions.get(agent)
        if not presence.online and session is not None and current not in (None, session):
            raise WireError(RejectReason.STALE, f"offline of session {session}, not {current}")
        self.presences[agent] = presence
        if presence.online:
            self.online.add(agent)
            self._roll_call.discard(agent)
            if session is not None:
                self._sessions[agent] = session
        else:
            self.online.discard(agent)

    def alive(self, *agents: str) -> None:
        """Proof of life: an accepted update (or a partial aggregate counting them). After a
        broker restart an agent's last will (offline) can come before its re-sent update and
        its new presence; it must stay in the next cohort."""
        self.online.update(agents)
        self._roll_call.difference_update(agents)

    def missing(self, agent: str) -> None:
        """``agent``'s update was refused because it never announced itself: call on it."""
        allowed = self._allowed is None or agent in self._allowed
        if allowed and agent not in self.online and len(self._roll_call) < MAX_ROLL_CALL:
            self._roll_call.add(agent)

    def take_roll_call(self) -> tuple[str, ...]:
        """The agents to name in the next announcement (sorted); the call is then made."""
        called, self._roll_call = tuple(sorted(self._roll_call)), set()
        return called
