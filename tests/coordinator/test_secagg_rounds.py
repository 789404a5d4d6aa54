"""SecAgg as a step of the round: real round machine and agent cores through the Fleet.

The sum each round gets is the plain fixed-point FedAvg of the survivors; agents die
at every phase and the round still closes (or retries cleanly); every SecAgg message
can be signed and chunked; combinations that need individual updates are refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from coordinator import RoundConfig
from coordinator.config import SecAggPolicy
from edge_agent.agent import AgentCore, ModelRejected
from protocol import Phase, Publish, RejectReason, TopicKind, TrainPlan, parse_topic
from protocol.keys import SigningKey
from protocol.peek import peek_fields
from protocol.signing import is_signed
from tests.helpers import Fleet

N = 6


def config(**overrides: Any) -> RoundConfig:
    settings: dict[str, Any] = {
        "job": "job1", "task": "linreg", "rounds": 3, "min_agents": N, "deadline_s": 30.0,
        "plan": TrainPlan(epochs=1, batch_size=8, lr=0.1), "evaluate": False, "min_replies": 2,
        "secagg": SecAggPolicy(clip=4.0),
    }
    settings.update(overrides)
    return RoundConfig(**settings)


def run(cfg: RoundConfig, kill: dict[str, set[str]] | None = None, **kw: Any) -> Fleet:
    """A run where, in round 1, the agents in ``kill[kind]`` die right after the
    coordinator publishes its first message of that kind (``secagg_roster``, ...)."""
    fleet = Fleet(N, cfg, **kw)
    pending = dict(kill or {})

    def hook(f: Fleet, action: object) -> None:
        if isinstance(action, Publish) and parse_topic(action.topic).kind is TopicKind.SECAGG:
            kind = _kind(action.payload)
            for agent in sorted(pending.pop(kind, set())):
                f.kill(agent)

    fleet.on_action = hook
    fleet.start()
    fleet.run_to_end()
    return fleet


def close_to(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol: float) -> None:
    assert list(actual) == list(expected)
    for name, want in expected.items():
        assert actual[name].dtype == np.float32
        np.testing.assert_allclose(actual[name], want, atol=atol)


def _kind(payload: bytes) -> str:
    if is_signed(payload):
        from protocol.signing import decode_signed

        payload = decode_signed(payload, 1 << 26).body
    kind: str = peek_fields(payload, ("type",))["type"]
    return kind


def test_a_secagg_run_reaches_the_plain_fedavg_model():
    secure, plain = run(config()), run(config(secagg=None))
    assert secure.rounds.phase is Phase.DONE and len(secure.history) == 3
    # the fixed-point ring (step 2^-frac_bits on every weighted coordinate) is the only
    # difference from the float32 FedAvg of the same updates
    close_to(secure.weights, plain.weights, atol=1e-5)
    for m in secure.history:
        assert m.accepted == N and m.samples == sum(10 * (k + 1) for k in range(N))
        assert m.secagg == {"keys": (), "shares": (), "masked": (), "unmask": ()}
        assert m.train_loss is None  # never sent in clear
    assert not any(isinstance(a, ModelRejected) for acts in secure.agent_actions.values()
                   for a in acts)


def test_agents_never_send_a_plain_update_in_a_secagg_round():
    fleet = run(config(rounds=1))
    ups = [p for a in fleet.agent_actions.values() for p in a if isinstance(p, Publish)]
    assert not [p for p in ups if parse_topic(p.topic).kind is TopicKind.UPDATE]
    assert {_kind(p.payload) for p in ups if parse_topic(p.topic).kind is TopicKind.SECAGG} == {
        "secagg_keys", "secagg_shares", "secagg_masked", "secagg_unmask"}


@pytest.mark.parametrize(
    ("when", "phase", "in_sum"),
    [
        ("secagg_roster", "shares", False),  # died before sending its shares
        ("secagg_relay", "masked", False),  # shared, died before its masked input
        ("secagg_survivors", "unmask", True),  # masked, died before unmasking
    ],
)
def test_agents_killed_at_each_phase_are_recorded_and_the_round_closes(when, phase, in_sum):
    fleet = run(config(), kill={when: {"a1", "a4"}})
    first = fleet.history[0]
    assert fleet.rounds.phase is Phase.DONE
    assert first.secagg is not None and first.secagg[phase] == ("a1", "a4")
    assert first.accepted == (N if in_sum else N - 2)
    # the dead agents' last wills close each phase at once: no deadline had to pass
    assert fleet.now == 0.0
    assert [m.accepted for m in fleet.history[1:]] == [N - 2, N - 2]


def test_beyond_the_threshold_the_round_is_retried_with_fresh_keys_then_fails_cleanly():
    cfg = config(max_retries=1, rounds=1, min_replies=3)
    fleet = run(cfg, kill={"secagg_relay": {"a0", "a1", "a2", "a3"}})  # 2 of 6 left, t = 4
    assert fleet.rounds.phase is Phase.FAILED
    # attempt 0 fails at the masked phase; in the retry only the two agents still online
    # send keys, too few for min_replies, and the run stops saying so
    assert "secagg keys phase: 2 of 6 agents sent keys, 3 needed" in fleet.rounds.message
    assert "after 1 retries" in fleet.rounds.message
    models = fleet.of_type(Publish)
    attempts = {peek_fields(p.payload, ("attempt",))["attempt"] for p in models
                if parse_topic(p.topic).kind is TopicKind.MODEL}
    assert attempts >= {0, 1}


def test_a_retry_re_masks_the_same_delta_without_training_again():
    # a3..a5 mask, then vanish without a last will: 3 unmask answers < t = 4, so the
    # session fails at the unmask deadline and the round is retried with fresh keys;
    # they come back and join the new session with the delta they already trained
    fleet = Fleet(N, config(rounds=1, max_retries=2))
    gone = ["a3", "a4", "a5"]
    killed: list[str] = []

    def hook(f: Fleet, action: object) -> None:
        secagg = isinstance(action, Publish) and action.topic == f.rounds.topics.secagg_down
        if secagg and _kind(action.payload) == "secagg_survivors" and not killed:
            killed.extend(gone)
            for agent in gone:
                f.kill(agent, will=False)

    fleet.on_action = hook
    fleet.start()
    assert fleet.rounds.phase is Phase.TRAINING
    fleet.advance_to_deadline()  # the unmask deadline: the attempt fails, a retry goes out
    assert "secagg unmask phase" in fleet.rounds.message
    for agent in gone:
        fleet.reconnect(agent)
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE and fleet.history[0].accepted == N
    assert all(len(fleet.trains_of(a)) == 1 for a in fleet.agent_ids)


def test_signed_and_chunked_secagg_rounds():
    coordinator = SigningKey.from_seed(b"c" * 32)
    keys = {f"a{k}": SigningKey.from_seed(bytes([k + 1]) * 32) for k in range(N)}
    cfg = config(signing_key=coordinator, agent_keys={a: k.public for a, k in keys.items()},
                 max_payload=1024)
    fleet = Fleet(N, cfg)
    for k, agent in enumerate(fleet.agent_ids):
        fleet.agents[agent] = AgentCore(
            cfg.job, agent, samples=10 * (k + 1), trainer="linear", signing_key=keys[agent],
            coordinator_key=coordinator.public, random_bytes=np.random.default_rng(k).bytes)
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE and [m.accepted for m in fleet.history] == [N] * 3
    secagg = [p for a in fleet.agent_actions.values() for p in a
              if isinstance(p, Publish) and parse_topic(p.topic).kind is TopicKind.SECAGG]
    assert all(len(p.payload) <= 1024 for p in secagg)  # the masked inputs went as chunks
    down = [p for p in fleet.of_type(Publish) if parse_topic(p.topic).kind is TopicKind.SECAGG]
    assert down and all(is_signed(p.payload) for p in down)
    plain = run(config(secagg=None))
    close_to(fleet.weights, plain.weights, atol=1e-5)


def test_a_forged_secagg_message_is_refused_with_its_reason():
    coordinator = SigningKey.from_seed(b"c" * 32)
    keys = {f"a{k}": SigningKey.from_seed(bytes([k + 1]) * 32) for k in range(N)}
    cfg = config(signing_key=coordinator, agent_keys={a: k.public for a, k in keys.items()},
                 rounds=1)
    fleet = Fleet(N, cfg)
    for agent in fleet.agent_ids:  # a0 signs with a1's key
        key = keys["a1"] if agent == "a0" else keys[agent]
        fleet.agents[agent] = AgentCore(cfg.job, agent, samples=10, trainer="linear",
                                        signing_key=key, coordinator_key=coordinator.public)
    # a0's presence is its own (signed with its key, as the coordinator now demands), so the
    # round asks it; only its SecAgg messages carry another agent's signature
    own = AgentCore(cfg.job, "a0", samples=10, trainer="linear", signing_key=keys["a0"])
    fleet.agents["a0"]._announcer = own._announcer
    fleet.start()
    fleet.run_to_end()
    reasons = {r.reason for r in fleet.rejections() if r.agent == "a0"}
    assert RejectReason.BAD_SIGNATURE in reasons
    assert fleet.history[0].secagg is not None and "a0" in fleet.history[0].secagg["keys"]


def test_server_optimisers_apply_to_the_secure_sum():
    adam = run(config(server_opt="fedadam:lr=0.05"))
    plain = run(config(server_opt="fedadam:lr=0.05", secagg=None))
    assert adam.rounds.phase is Phase.DONE
    close_to(adam.weights, plain.weights, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aggregator": "median"}, "robust aggregators"),
        ({"aggregator": "krum:1"}, "robust aggregators"),
        ({"clip_norm": 1.0}, "server-side clipping"),
        ({"codec": "topk:0.1"}, "update codecs"),
        ({"codec": "int8"}, "update codecs"),
        ({"dp_noise": 1.0, "dp_clip": 1.0}, "DP-FedAvg"),
    ],
)
def test_combinations_that_need_individual_updates_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_policy_refuses_bad_settings():
    for bad in ({"degree": 3}, {"threshold": 1.0}, {"keys_s": 0.0}, {"ring_bits": 16},
                {"clip": 0.0}):
        with pytest.raises(ValueError):
            replace(SecAggPolicy(), **bad)


def test_a_roster_above_the_payload_cap_fails_the_round_saying_so():
    cfg = config(rounds=1, min_agents=12, max_payload=1024, on_short_round="stop")
    fleet = Fleet(12, cfg)
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.FAILED
    assert "exceeds --max-payload 1024" in fleet.rounds.message
    assert not [p for p in fleet.of_type(Publish) if len(p.payload) > 1024
                and parse_topic(p.topic).kind is TopicKind.SECAGG]


def test_a_coordinator_restarted_mid_session_gets_fresh_keys_and_the_round_completes():
    fleet = Fleet(N, config(rounds=2))
    crashed: list[bool] = []

    def hook(f: Fleet, action: object) -> None:
        relay = isinstance(action, Publish) and action.topic == f.rounds.topics.secagg_down_to("a0")
        if relay and not crashed:  # round 1's relays are out: the coordinator dies
            crashed.append(True)
            f.crash_coordinator()

    fleet.on_action = hook
    fleet.start()
    assert crashed and fleet.rounds.phase is Phase.TRAINING
    fleet.on_action = None
    fleet.advance(1.0)  # the new process announces at a later time
    fleet.restart_coordinator()  # no checkpoint yet: round 1 again, attempt 0, same session id
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE and [m.accepted for m in fleet.history] == [N, N]
    assert fleet.now == 1.0  # no phase had to wait out a deadline: agents joined at once
