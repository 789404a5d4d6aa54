"""The coordinator's SecAgg session: exact sums, dropouts at every phase, clean failures,
refused messages, and what a curious coordinator gets to see."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.config import SecAggPolicy
from coordinator.secagg import SecAggRejected, SecAggRound
from protocol import RejectReason
from protocol.secagg import (
    KeysAdvert,
    MaskedInput,
    SecAggPhase,
    Session,
    SharesOut,
    UnmaskShares,
    decode_up,
    encode_up,
)
from protocol.secagg.fixedpoint import decode_sum, ring_length
from tests.secagg_fleet import (
    SESSION,
    SHAPES,
    Outcome,
    SecAggFleet,
    deltas_for,
    plain_sum,
    ring_for,
    seeded,
)

AGENTS = [f"a{i:02d}" for i in range(10)]
SAMPLES = {a: 10 + 3 * i for i, a in enumerate(AGENTS)}
PHASES = [SecAggPhase.KEYS, SecAggPhase.SHARES, SecAggPhase.MASKED, SecAggPhase.UNMASK]


def expected_sum(agents: set[str] | list[str], ring, seed: int = 0):
    """The oracle: decode the plain (unmasked) fixed-point sum of the same inputs."""
    deltas = deltas_for(AGENTS, seed)
    total = plain_sum({a: deltas[a] for a in agents}, SAMPLES, ring)
    as_ring = total.astype(np.int64).view(np.uint64).astype(ring.dtype)  # two's complement
    return decode_sum(as_ring, ring, SHAPES)


def run(drop=None, *, agents=AGENTS, policy=None, quorum=None, seed=0, ring=None, min_inputs=2
        ) -> Outcome:
    ring = ring or ring_for(len(agents))
    fleet = SecAggFleet(list(agents), ring, policy or SecAggPolicy(), quorum=quorum, seed=seed,
                        min_inputs=min_inputs)
    return fleet.run(deltas_for(AGENTS, seed), SAMPLES, drop)


def assert_exact(out: Outcome, survivors: set[str], ring=None) -> None:
    assert out.failed is None, out.failed
    assert out.done is not None and out.done.survivors == survivors
    oracle = expected_sum(survivors, ring or ring_for(len(AGENTS)))
    assert out.done.result.samples == oracle.samples == sum(SAMPLES[a] for a in survivors)
    for name in SHAPES:  # bit for bit: the masks cancel exactly
        assert out.done.result.delta[name].tobytes() == oracle.delta[name].tobytes()


@pytest.mark.parametrize("bits", [32, 64])
def test_masks_cancel_and_the_sum_is_the_plain_fixed_point_sum(bits):
    ring = ring_for(len(AGENTS), bits=bits)
    out = run(ring=ring)
    assert_exact(out, set(AGENTS), ring)
    assert [c.phase for c in out.closed] == PHASES
    assert all(not c.dropped for c in out.closed) and not out.rejected


def test_the_fixed_point_mean_is_close_to_the_float_mean():
    out = run()
    deltas = deltas_for(AGENTS)
    total = sum(SAMPLES.values())
    for name in SHAPES:
        mean = sum(SAMPLES[a] * deltas[a][name].astype(np.float64) for a in AGENTS) / total
        np.testing.assert_allclose(out.done.result.delta[name], mean, atol=1e-6)


@pytest.mark.parametrize("phase", PHASES)
def test_dropouts_up_to_the_threshold_at_every_phase_recover_the_sum(phase):
    # 10 agents, complete graph: t = 6. Four may drop at any phase and the sum survives.
    gone = {"a01", "a04", "a07", "a08"}
    out = run({phase: gone})
    survivors = set(AGENTS) - gone if phase is not SecAggPhase.UNMASK else set(AGENTS)
    assert_exact(out, survivors)
    closed = {c.phase: c.dropped for c in out.closed}
    assert closed[phase] == gone  # the round records who dropped where
    assert out.coordinator.dropped[phase] == gone


def test_dropouts_spread_over_all_phases():
    drop = {SecAggPhase.KEYS: {"a00"}, SecAggPhase.SHARES: {"a03"},
            SecAggPhase.MASKED: {"a05", "a06"}, SecAggPhase.UNMASK: {"a09"}}
    out = run(drop)
    assert_exact(out, set(AGENTS) - {"a00", "a03", "a05", "a06"})
    assert {c.phase: c.dropped for c in out.closed} == drop


@pytest.mark.parametrize("phase", PHASES)
def test_beyond_the_threshold_the_session_fails_cleanly(phase):
    # 5 of 10 left. Before the roster the bound is the round's min_replies (here 6); after
    # it, the threshold t = 6: the masked phase needs t survivors, unmasking t answers.
    gone = {"a00", "a02", "a04", "a06", "a08"}
    out = run({phase: gone}, min_inputs=6 if phase is SecAggPhase.KEYS else 2)
    assert out.done is None and out.failed is not None
    assert f"secagg {phase.value} phase" in out.failed.message
    assert out.coordinator.phase is SecAggPhase.FAILED and out.coordinator.next_deadline() is None


def test_secagg_plus_graph_survives_dropouts_and_refuses_a_disconnected_survivor_set():
    policy = SecAggPolicy(degree=4)  # 4 neighbours each, t = 3 of 5
    out = run({SecAggPhase.MASKED: {"a03"}, SecAggPhase.UNMASK: {"a06"}}, policy=policy)
    assert_exact(out, set(AGENTS) - {"a03"})
    roster = out.coordinator.roster
    assert roster is not None and (roster.degree, roster.threshold) == (4, 3)
    # the same seed draws the same graph: now drop all of a00's neighbours before masking,
    # which would leave a00's input standing alone once their masks are removed
    lonely = out.coordinator._graph["a00"]
    cut = run({SecAggPhase.MASKED: set(lonely)}, policy=policy)
    assert cut.done is None and cut.failed is not None
    assert "disconnected" in cut.failed.message


def test_quorum_closes_the_masked_phase_early():
    out = run({SecAggPhase.MASKED: {"a09"}}, quorum=9)
    assert_exact(out, set(AGENTS) - {"a09"})


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_any_dropout_pattern_within_the_threshold_recovers_the_sum(data):
    budget = 4  # of 10, t = 6
    drop: dict[SecAggPhase, set[str]] = {}
    pool = list(AGENTS)
    for phase in PHASES:
        k = data.draw(st.integers(0, budget))
        chosen = set(data.draw(st.permutations(pool))[:k])
        pool = [a for a in pool if a not in chosen]
        budget -= k
        drop[phase] = chosen
    out = run(drop)
    inputs = set(AGENTS) - drop[SecAggPhase.KEYS] - drop[SecAggPhase.SHARES] - drop[
        SecAggPhase.MASKED]
    assert_exact(out, inputs)


# --- what the coordinator holds --------------------------------------------------------------


def test_a_masked_input_is_indistinguishable_from_uniform():
    # The most structured input there is (every coordinate 0.25, one weight): its encoding
    # holds two byte values. Masked, the coordinator's copy passes a chi-square test for
    # uniform bytes; the unmasked encoding fails it by orders of magnitude.
    shapes = {"w": (4096,)}
    agents = ["a", "b", "c"]
    ring = ring_for(3)
    fleet = SecAggFleet(agents, ring, shapes=shapes)
    delta = {"w": np.full(4096, 0.25, dtype=np.float32)}
    out = fleet.run(dict.fromkeys(agents, delta), dict.fromkeys(agents, 8))
    assert out.done is not None
    masked = [m for m in map(decode_up, fleet.seen["a"]) if isinstance(m, MaskedInput)]
    assert len(masked) == 1

    def chi2(raw: bytes) -> float:
        counts = np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=256)
        expected = len(raw) / 256
        return float(((counts - expected) ** 2 / expected).sum())

    plain = np.zeros(ring_length(shapes), dtype=ring.dtype)
    plain[0], plain[1:] = 8, 8 * 0.25 * 2**ring.frac_bits
    assert chi2(masked[0].data) < 330.5  # 255 degrees of freedom, p = 0.001
    assert chi2(plain.tobytes()) > 10_000


def test_the_coordinator_never_holds_both_secrets_of_one_agent():
    fleet = SecAggFleet(AGENTS, ring_for(10))
    out = fleet.run(deltas_for(AGENTS), SAMPLES, {SecAggPhase.MASKED: {"a02", "a05"},
                                                  SecAggPhase.UNMASK: {"a07"}})
    assert out.done is not None
    seeds, keys = set(), set()
    for payloads in fleet.seen.values():
        for p in payloads:
            m = decode_up(p)
            if isinstance(m, UnmaskShares):
                seeds |= {r.owner for r in m.seed_shares}
                keys |= {r.owner for r in m.key_shares}
    assert keys == {"a02", "a05"} and seeds == set(AGENTS) - keys
    assert not seeds & keys


# --- refused messages -------------------------------------------------------------------------


def fresh(agents=("a", "b", "c"), **kw) -> SecAggRound:
    return SecAggRound(SESSION, ring_for(3), SecAggPolicy(), frozenset(agents), SHAPES, now=0.0,
                       keys_deadline=10.0, masked_deadline=60.0, quorum=3, min_inputs=2,
                       random_bytes=seeded(5), **kw)


def reason(actions) -> RejectReason:
    assert len(actions) == 1 and isinstance(actions[0], SecAggRejected), actions
    return actions[0].reason


def keys(agent: str, session: Session = SESSION, i: int = 0) -> bytes:
    from protocol.secagg import crypto

    enc = crypto.public_of(bytes([i + 1]) * 32)
    mask = crypto.public_of(bytes([i + 101]) * 32)
    return encode_up(KeysAdvert(session, agent, enc, mask))


def test_refusals_change_nothing():
    r = fresh()
    assert r.handle("a", keys("a"), 0.0) == []
    before = (dict(r.got.keys), r.phase)
    other = Session("job", "run-1", 1, 1)
    assert reason(r.handle("a", keys("a"), 0.0)) is RejectReason.DUPLICATE
    assert reason(r.handle("b", keys("a", i=1), 0.0)) is RejectReason.AGENT_MISMATCH
    assert reason(r.handle("z", keys("z", i=2), 0.0)) is RejectReason.NOT_IN_COHORT
    assert reason(r.handle("b", keys("b", other, 1), 0.0)) is RejectReason.FUTURE_ROUND
    assert reason(r.handle("b", keys("b", Session("job", "run-0", 1, 0), 1), 0.0)) is (
        RejectReason.STALE)
    assert reason(r.handle("b", keys("b", Session("x", "run-1", 1, 0), 1), 0.0)) is (
        RejectReason.WRONG_JOB)
    assert reason(r.handle("b", keys("a"), 0.0)) is RejectReason.AGENT_MISMATCH
    reused = decode_up(keys("a"))
    assert isinstance(reused, KeysAdvert)
    again = encode_up(KeysAdvert(SESSION, "b", reused.enc_pk, bytes([9]) * 32))
    assert reason(r.handle("b", again, 0.0)) is RejectReason.BAD_KEY
    low = encode_up(KeysAdvert(SESSION, "b", bytes(32), bytes([9]) * 32))
    assert reason(r.handle("b", low, 0.0)) is RejectReason.BAD_KEY
    masked = encode_up(MaskedInput(SESSION, "b", bytes(4 * ring_length(SHAPES))))
    assert reason(r.handle("b", masked, 0.0)) is RejectReason.OUT_OF_PHASE
    assert reason(r.handle("b", b"\x93garbage", 0.0)) is RejectReason.MALFORMED
    assert (dict(r.got.keys), r.phase) == before


def test_late_duplicate_and_wrong_size_messages_in_later_phases():
    fleet = SecAggFleet(["a", "b", "c"], ring_for(3))
    out = fleet.run(deltas_for(["a", "b", "c"]), {"a": 1, "b": 2, "c": 3})
    r = out.coordinator
    assert r.phase is SecAggPhase.DONE
    first = {a: [decode_up(p) for p in ps] for a, ps in fleet.seen.items()}
    shares = next(m for m in first["a"] if isinstance(m, SharesOut))
    assert reason(r.handle("a", encode_up(shares), 99.0)) is RejectReason.DUPLICATE
    assert reason(r.handle("a", keys("a"), 99.0)) is RejectReason.DUPLICATE
    # a masked input of the wrong size, in the masked phase of a fresh session
    r2 = fresh()
    for i, a in enumerate("abc"):
        r2.handle(a, keys(a, i=i), 0.0)
    assert r2.phase is SecAggPhase.SHARES
    short = encode_up(MaskedInput(SESSION, "a", bytes(8)))
    assert reason(r2.handle("a", short, 1.0)) is RejectReason.OUT_OF_PHASE
    assert reason(r2.handle("a", keys("a"), 1.0)) is RejectReason.DUPLICATE
    r2.tick(100.0)  # nobody shared: the session fails at the share phase, cleanly
    assert r2.phase is SecAggPhase.FAILED and "shares phase" in r2.message
    assert reason(r2.handle("a", short, 101.0)) is RejectReason.STALE


def test_forged_unmask_shares_fail_the_session_instead_of_corrupting_the_sum():
    fleet = SecAggFleet(AGENTS, ring_for(10))
    coordinator = fleet.coordinator
    real = coordinator.handle

    def tamper(agent, payload, now):
        m = decode_up(payload)
        if isinstance(m, UnmaskShares) and m.seed_shares:
            bad = m.seed_shares[0].__class__(m.seed_shares[0].owner, 12345)
            payload = encode_up(UnmaskShares(m.session, m.agent, (bad, *m.seed_shares[1:]),
                                             m.key_shares))
        return real(agent, payload, now)

    coordinator.handle = tamper  # type: ignore[method-assign]
    out = fleet.run(deltas_for(AGENTS), SAMPLES)
    assert out.done is None and out.failed is not None
    assert "commitment" in out.failed.message or "recover" in out.failed.message


def test_unmask_shares_for_the_wrong_agents_are_refused():
    fleet = SecAggFleet(AGENTS, ring_for(10))
    coordinator = fleet.coordinator
    real = coordinator.handle
    verdicts: list = []

    def swap(agent, payload, now):
        m = decode_up(payload)
        if isinstance(m, UnmaskShares) and agent == "a00":
            # claim a00's own seed share is a key share: a coordinator asking for both
            # is exactly what an honest agent must never answer
            forged = UnmaskShares(m.session, m.agent, m.seed_shares[1:], m.seed_shares[:1])
            verdicts.extend(real(agent, encode_up(forged), now))
        return real(agent, payload, now)

    coordinator.handle = swap  # type: ignore[method-assign]
    out = fleet.run(deltas_for(AGENTS), SAMPLES)
    assert out.done is not None
    assert any(isinstance(v, SecAggRejected) and v.reason is RejectReason.BAD_SHARE
               for v in verdicts)


@pytest.mark.parametrize("phase", PHASES)
def test_an_agent_known_gone_closes_its_phase_without_waiting_for_the_deadline(phase):
    fleet = SecAggFleet(AGENTS, ring_for(10))
    coordinator = fleet.coordinator
    real_handle = coordinator.handle
    told: list[SecAggPhase] = []

    def handle(agent, payload, now):
        actions = real_handle(agent, payload, now)
        if coordinator.phase is phase and phase not in told:  # the phase just opened
            told.append(phase)
            actions = actions + coordinator.drop("a03", now)  # its last will arrives
        return actions

    coordinator.handle = handle  # type: ignore[method-assign]
    if phase is SecAggPhase.KEYS:
        told.append(phase)
        coordinator.drop("a03", 0.0)
    out = fleet.run(deltas_for(AGENTS), SAMPLES, {phase: {"a03"}})
    assert_exact(out, set(AGENTS) - ({"a03"} if phase is not SecAggPhase.UNMASK else set()))
    assert fleet.now == 0.0  # no deadline ever had to pass
    assert out.coordinator.dropped[phase] == {"a03"}
