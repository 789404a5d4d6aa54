"""The round machine with provisioned keys: signed models out, only verified updates in.

Two agent cores and one round machine are wired by hand through the real
encoders; every rejection is checked for its reason and for leaving the round
(accepted set, aggregate, history) exactly as it was.
"""

from __future__ import annotations

from dataclasses import replace

import msgpack
import numpy as np
import pytest

from coordinator import MessageRejected, Publish, RoundConfig, Rounds, UpdateAccepted, UpdateArrived
from coordinator.events import PresenceArrived
from edge_agent.agent import AgentCore, Connected, ModelArrived, Train, TrainingDone
from edge_agent.trainer import TrainResult
from protocol import RejectReason, TrainPlan, Update, encode_delta, encode_update
from protocol.keys import SigningKey
from protocol.signing import Purpose, open_model, seal

COORDINATOR = SigningKey.from_seed(b"c" * 32)
AGENT_KEYS = {"a1": SigningKey.from_seed(b"1" * 32), "a2": SigningKey.from_seed(b"2" * 32)}
WEIGHTS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4) / 12, "b": np.zeros(4, np.float32)}


def secure_config(**overrides: object) -> RoundConfig:
    settings: dict[str, object] = {
        "job": "j", "task": "t", "rounds": 3, "min_agents": 2, "plan": TrainPlan(),
        "evaluate": False, "signing_key": COORDINATOR,
        "agent_keys": {a: k.public for a, k in AGENT_KEYS.items()},
    }
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


class Wired:
    """One round machine and two signing agents; models are delivered by hand."""

    def __init__(self, config: RoundConfig | None = None, *, verify_models: bool = True) -> None:
        self.rounds = Rounds(config or secure_config(), WEIGHTS, run="run1")
        self.agents = {
            a: AgentCore("j", a, samples=10, trainer="fake", signing_key=key,
                         coordinator_key=COORDINATOR.public if verify_models else None)
            for a, key in AGENT_KEYS.items()
        }
        self.models: list[bytes] = []
        self.now = 0.0
        for core in self.agents.values():
            (presence,) = [p for p in core.handle(Connected()) if isinstance(p, Publish)]
            self._keep(self.rounds.handle(PresenceArrived(core.agent, presence.payload), 0.0))

    def _keep(self, actions: list[object]) -> list[object]:
        self.models += [a.payload for a in actions
                        if isinstance(a, Publish) and a.topic.endswith("/model")]
        return actions

    def answer(self, agent: str, step: float = 0.5) -> bytes:
        """``agent`` trains on the latest model (its weights + ``step``); returns its update."""
        core = self.agents[agent]
        (train,) = [a for a in core.handle(ModelArrived(self.models[-1]))
                    if isinstance(a, Train)]
        local = {n: w + step for n, w in train.model.weights.items()}
        (publish,) = [a for a in core.handle(TrainingDone(train.key, TrainResult(local, 10), 0.1))
                      if isinstance(a, Publish)]
        assert publish.topic == f"fedmq/v1/j/update/{agent}"
        return publish.payload

    def deliver(self, agent: str, payload: bytes) -> list[object]:
        self.now += 1.0
        return self._keep(self.rounds.handle(UpdateArrived(agent, payload), self.now))


def rejected(actions: list[object]) -> RejectReason:
    (reject,) = [a for a in actions if isinstance(a, MessageRejected)]
    assert not any(isinstance(a, UpdateAccepted) for a in actions)
    return reject.reason


def test_models_are_signed_and_signed_updates_complete_rounds():
    fleet = Wired()
    body = open_model(fleet.models[-1], job="j", key=COORDINATOR.public, max_body_bytes=1 << 20)
    assert body != fleet.models[-1]  # the model travelled inside an envelope
    for _ in range(3):
        for agent in AGENT_KEYS:
            fleet.deliver(agent, fleet.answer(agent))
    assert fleet.rounds.completed_rounds == 3
    assert [m.accepted for m in fleet.rounds.history] == [2, 2, 2]
    np.testing.assert_allclose(fleet.rounds.weights["w"], WEIGHTS["w"] + 1.5, atol=1e-6)


def test_replayed_altered_forged_and_misrouted_updates_are_rejected_and_change_nothing():
    fleet = Wired()
    round1 = fleet.answer("a1")
    fleet.deliver("a1", round1)
    fleet.deliver("a2", fleet.answer("a2"))
    genuine = fleet.answer("a1")  # round 2
    altered = bytearray(genuine)
    altered[len(altered) // 2] ^= 0x40  # somewhere in the tensors
    forged_body = msgpack.unpackb(genuine)["body"]
    forged = seal(forged_body, Purpose.UPDATE, job="j", run="run1", signer="a1",
                  key=SigningKey.from_seed(b"x" * 32))
    bare = forged_body
    weights_before = {n: w.copy() for n, w in fleet.rounds.weights.items()}
    status_before = fleet.rounds.rejected_total

    assert rejected(fleet.deliver("a1", round1)) is RejectReason.STALE  # replayed from round 1
    assert rejected(fleet.deliver("a1", bytes(altered))) is RejectReason.BAD_SIGNATURE
    assert rejected(fleet.deliver("a1", forged)) is RejectReason.BAD_SIGNATURE
    assert rejected(fleet.deliver("a1", bare)) is RejectReason.UNSIGNED
    assert rejected(fleet.deliver("a2", genuine)) is RejectReason.AGENT_MISMATCH  # a1's, on a2's
    assert status_before == {}
    assert fleet.rounds.rejected_total == {"stale": 1, "bad_signature": 2, "unsigned": 1,
                                           "agent_mismatch": 1}
    # nothing was accepted: a1's genuine update still counts, once
    assert any(isinstance(a, UpdateAccepted) for a in fleet.deliver("a1", genuine))
    assert rejected(fleet.deliver("a1", genuine)) is RejectReason.DUPLICATE
    fleet.deliver("a2", fleet.answer("a2"))
    assert fleet.rounds.completed_rounds == 2
    assert fleet.rounds.history[1].rejected == {"stale": 1, "bad_signature": 2, "unsigned": 1,
                                                "agent_mismatch": 1, "duplicate": 1}
    np.testing.assert_allclose(fleet.rounds.weights["w"], weights_before["w"] + 0.5, atol=1e-6)


def test_an_update_signed_for_another_run_is_refused_as_wrong_run():
    fleet = Wired()
    body = msgpack.unpackb(fleet.answer("a1"))["body"]
    other_run = seal(body, Purpose.UPDATE, job="j", run="run0", signer="a1", key=AGENT_KEYS["a1"])
    assert rejected(fleet.deliver("a1", other_run)) is RejectReason.WRONG_RUN


def test_only_provisioned_agents_take_part():
    config = secure_config(agent_keys={"a1": AGENT_KEYS["a1"].public}, min_agents=1)
    assert config.allowed_agents == frozenset({"a1"})
    fleet = Wired(config)
    (signed_by_a2,) = [fleet.answer("a2")]
    assert rejected(fleet.deliver("a2", signed_by_a2)) is RejectReason.UNKNOWN_AGENT
    with pytest.raises(ValueError, match="without an update key"):
        secure_config(allowed_agents=frozenset({"a1", "a3"}))


def test_a_signed_decline_closes_the_round_for_that_agent():
    fleet = Wired(secure_config(min_replies=1))
    model = open_model(fleet.models[-1], job="j", key=COORDINATOR.public, max_body_bytes=1 << 20)
    fleet.deliver("a1", fleet.answer("a1"))
    decline = Update(job="j", agent="a2", round=1, model_id=_model_id(model), samples=0,
                     codec="none", tensors=(), declined="battery low")
    signed = seal(encode_update(decline), Purpose.UPDATE, job="j", run="run1", signer="a2",
                  key=AGENT_KEYS["a2"])
    fleet.deliver("a2", signed)
    assert fleet.rounds.completed_rounds == 1
    assert fleet.rounds.history[0].declined == 1


def _model_id(body: bytes) -> str:
    model_id: str = msgpack.unpackb(body)["model_id"]
    return model_id


def test_an_unsigned_coordinator_still_reads_signed_updates():
    config = replace(secure_config(), agent_keys=None, signing_key=None, allowed_agents=None)
    fleet = Wired(config, verify_models=False)
    fleet.deliver("a1", fleet.answer("a1"))
    # ... and an unsigned update alongside (a mixed fleet: nothing is verified)
    model = open_model(fleet.models[-1], job="j", key=None, max_body_bytes=1 << 20)
    bare = Update(job="j", agent="a2", round=1, model_id=_model_id(model), samples=10,
                  codec="none", tensors=tuple(encode_delta(
                      {n: np.zeros_like(w) for n, w in WEIGHTS.items()}, "none")))
    fleet.deliver("a2", encode_update(bare))
    assert fleet.rounds.completed_rounds == 1
