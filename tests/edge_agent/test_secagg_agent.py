"""The agent's SecAgg session: one answer per phase, the same bytes when asked again,
and every coordinator message that could unmask it refused with a reason."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coordinator.config import SecAggPolicy
from edge_agent.secagg import ClientPhase, SecAggClient
from protocol import RejectReason, WireError
from protocol.secagg import (
    MaskedInput,
    Relay,
    Roster,
    Sealed,
    SecAggConfig,
    SecAggPhase,
    SharesOut,
    Survivors,
    UnmaskShares,
    decode_down,
    decode_up,
)
from tests.secagg_fleet import SESSION, SecAggFleet, deltas_for, ring_for, seeded

AGENTS = ["a", "b", "c", "d"]
SAMPLES = dict.fromkeys(AGENTS, 5)


@pytest.fixture(scope="module")
def recorded():
    """The coordinator's messages of one whole session, and agent a's replies."""
    fleet = SecAggFleet(AGENTS, ring_for(4))
    published: list[bytes] = []
    real = fleet.coordinator.handle

    def record(agent, payload, now):
        actions = real(agent, payload, now)
        published.extend(a.payload for a in actions if hasattr(a, "payload"))
        return actions

    fleet.coordinator.handle = record  # type: ignore[method-assign]
    out = fleet.run(deltas_for(AGENTS), SAMPLES)
    assert out.done is not None
    down = [decode_down(p) for p in published]
    roster = next(m for m in down if isinstance(m, Roster))
    relay = next(m for m in down if isinstance(m, Relay) and m.agent == "a")
    survivors = next(m for m in down if isinstance(m, Survivors))
    return roster, relay, survivors


def client_a() -> SecAggClient:
    """Agent a exactly as in the recorded session (same seeded randomness)."""
    return SecAggClient(SESSION, "a", SecAggConfig(ring_for(4), 10.0), seeded([0, 0]))


def refuse(call, reason: RejectReason) -> WireError:
    with pytest.raises(WireError) as exc:
        call()
    assert exc.value.reason is reason, exc.value
    return exc.value


def masked_client(recorded) -> tuple[SecAggClient, bytes]:
    roster, relay, _ = recorded
    c = client_a()
    c.receive(roster)
    assert c.set_input(deltas_for(AGENTS)["a"], 5, np.random.default_rng(0)) is None
    reply = c.receive(relay)
    assert reply is not None and c.phase is ClientPhase.MASKED
    return c, reply


def test_every_phase_answers_once_and_repeats_the_same_bytes(recorded):
    roster, relay, survivors = recorded
    c = client_a()
    assert c.advertise() == c.advertise()
    shares = c.receive(roster)
    assert isinstance(decode_up(shares), SharesOut) and c.receive(roster) == shares
    assert c.receive(relay) is None  # still training: nothing to mask yet
    masked = c.set_input(deltas_for(AGENTS)["a"], 5, np.random.default_rng(0))
    assert isinstance(decode_up(masked), MaskedInput)
    assert c.receive(relay) == masked and c.set_input({}, 0, np.random.default_rng(9)) == masked
    unmask = c.receive(survivors)
    assert isinstance(decode_up(unmask), UnmaskShares) and c.receive(survivors) == unmask
    assert c.phase is ClientPhase.UNMASKED


def test_a_second_different_message_for_a_phase_is_refused(recorded):
    roster, relay, survivors = recorded
    c, _ = masked_client(recorded)
    fewer = dataclasses.replace(survivors, survivors=tuple(a for a in AGENTS if a != "d"))
    c.receive(survivors)
    # asked again with another survivor list, a would reveal d's mask key as well as
    # the seed share it already gave: refused
    err = refuse(lambda: c.receive(fewer), RejectReason.OUT_OF_PHASE)
    assert "different survivors" in err.detail
    for changed in (dataclasses.replace(roster, deadline_s=1.0),
                    dataclasses.replace(relay, deadline_s=1.0)):
        refuse(lambda m=changed: c.receive(m), RejectReason.OUT_OF_PHASE)


def test_out_of_order_and_foreign_messages_are_refused(recorded):
    roster, relay, survivors = recorded
    c = client_a()
    refuse(lambda: c.receive(relay), RejectReason.OUT_OF_PHASE)
    refuse(lambda: c.receive(survivors), RejectReason.OUT_OF_PHASE)
    other = dataclasses.replace(roster, session=dataclasses.replace(SESSION, attempt=1))
    refuse(lambda: c.receive(other), RejectReason.STALE)
    c.receive(roster)
    refuse(lambda: c.receive(survivors), RejectReason.OUT_OF_PHASE)  # not masked yet
    refuse(lambda: c.receive(dataclasses.replace(relay, agent="b")), RejectReason.AGENT_MISMATCH)
    assert c.phase is ClientPhase.SHARED


def test_a_roster_without_our_keys_is_refused(recorded):
    roster, _, _ = recorded
    swapped = tuple(dataclasses.replace(p, enc_pk=bytes(32)) if p.agent == "a" else p
                    for p in roster.participants)
    c = client_a()
    refuse(lambda: c.receive(dataclasses.replace(roster, participants=swapped)),
           RejectReason.BAD_KEY)
    assert c.phase is ClientPhase.ADVERTISED
    assert isinstance(decode_up(c.receive(roster)), SharesOut)  # the real one still works


def test_tampered_or_misdirected_shares_are_refused_and_change_nothing(recorded):
    roster, relay, _ = recorded
    c = client_a()
    c.receive(roster)
    first = relay.shares[0]
    flipped = Sealed(first.peer, first.ciphertext[:-1] + bytes([first.ciphertext[-1] ^ 1]))
    bad = dataclasses.replace(relay, shares=(flipped, *relay.shares[1:]))
    refuse(lambda: c.receive(bad), RejectReason.BAD_SHARE)
    # b's share to a passed off as coming from c: the associated data names the sender
    mislabelled = [Sealed("c" if s.peer == "b" else "b", s.ciphertext) for s in relay.shares[:2]]
    moved = dataclasses.replace(relay, shares=tuple(sorted(mislabelled, key=lambda s: s.peer)))
    refuse(lambda: c.receive(moved), RejectReason.BAD_SHARE)
    too_few = dataclasses.replace(relay, shares=relay.shares[:1])  # t = 3 needs 2 neighbours
    refuse(lambda: c.receive(too_few), RejectReason.MALFORMED)
    assert c.set_input(deltas_for(AGENTS)["a"], 5, np.random.default_rng(0)) is None
    assert c.receive(relay) is not None  # the genuine relay still goes through


def test_survivor_lists_that_would_expose_an_input_are_refused(recorded):
    _, _, survivors = recorded
    c, _ = masked_client(recorded)
    for names, reason in [
        (("b", "c", "d"), RejectReason.MALFORMED),  # a masked, yet it is not a survivor
        (("a", "b"), RejectReason.MALFORMED),  # fewer than t = 3 survivors
        (("a", "b", "z"), RejectReason.NOT_IN_COHORT),  # someone outside the roster
    ]:
        refuse(lambda n=names: c.receive(dataclasses.replace(survivors, survivors=n)), reason)
    assert c.phase is ClientPhase.MASKED
    unmask = decode_up(c.receive(survivors))
    assert isinstance(unmask, UnmaskShares)
    assert [r.owner for r in unmask.seed_shares] == AGENTS and unmask.key_shares == ()


def test_survivors_disconnected_in_a_secagg_plus_graph_are_refused():
    # A ring of 8 (SecAgg+ degree 2, t = 2). Everyone masks; then the coordinator names
    # as survivors two agents that are not neighbours: unmasking them would hand it each
    # one's input alone, so both refuse.
    agents = [f"a{i}" for i in range(8)]
    policy = SecAggPolicy(degree=2, threshold=0.3)
    fleet = SecAggFleet(agents, ring_for(8), policy)
    out = fleet.run(deltas_for(agents), dict.fromkeys(agents, 1),
                    {SecAggPhase.UNMASK: set(agents)})  # all masked, none heard the survivors
    assert out.failed is not None and out.coordinator.roster.threshold == 2
    left, right = sorted(out.coordinator._graph["a0"])
    apart = Survivors(SESSION, (left, right), 5.0)
    for agent in (left, right):
        client = fleet.clients[agent]
        assert client.phase is ClientPhase.MASKED
        err = refuse(lambda c=client: c.receive(apart), RejectReason.MALFORMED)
        assert "disconnected" in err.detail
        assert client.phase is ClientPhase.MASKED
