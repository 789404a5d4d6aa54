"""The agent core with the coordinator's key: it trains only on models the coordinator signed.

A forged, altered or unsigned model (one a compromised broker, or a client with
publish rights on the model topic, could deliver) is refused with its reason,
and the agent's state is as if it had never arrived.
"""

from __future__ import annotations

import msgpack
import numpy as np

from coordinator import Publish, RoundConfig, Rounds, UpdateAccepted, UpdateArrived
from coordinator.events import PresenceArrived
from edge_agent.agent import (
    AgentCore,
    Connected,
    ModelArrived,
    ModelRejected,
    RunFinished,
    Train,
    TrainingDone,
    TrainingFailed,
)
from edge_agent.trainer import TrainResult
from protocol import ModelAnnouncement, RejectReason, TrainPlan, encode_model
from protocol.chunks import is_chunk_frame
from protocol.keys import SigningKey, VerifyKey
from protocol.signing import Purpose, open_update, seal

COORDINATOR = SigningKey.from_seed(b"c" * 32)
MALLORY = SigningKey.from_seed(b"m" * 32)
AGENT = SigningKey.from_seed(b"1" * 32)
WEIGHTS = {"w": np.arange(6000, dtype=np.float32).reshape(60, 100) / 6000,
           "b": np.zeros(100, np.float32)}


def model(round_no: int = 1, *, done: bool = False, scale: float = 1.0) -> ModelAnnouncement:
    return ModelAnnouncement(
        job="j", run="run1", round=round_no, model_id=f"m{round_no}", task="t",
        plan=TrainPlan(), codec="none", deadline_s=0.0 if done else 30.0, done=done,
        weights={n: w * scale for n, w in WEIGHTS.items()}, issued_at=1.0,
    )


def signed(m: ModelAnnouncement, key: SigningKey = COORDINATOR) -> bytes:
    return seal(encode_model(m), Purpose.MODEL, job="j", run=m.run, signer="coordinator", key=key)


def agent() -> AgentCore:
    core = AgentCore("j", "a1", samples=10, trainer="fake", signing_key=AGENT,
                     coordinator_key=COORDINATOR.public)
    core.handle(Connected())
    return core


def refusal(core: AgentCore, payload: bytes) -> RejectReason:
    actions = core.handle(ModelArrived(payload))
    (refused,) = actions
    assert isinstance(refused, ModelRejected)
    return refused.reason


def test_forged_altered_and_unsigned_models_are_refused_and_leave_no_trace():
    core = agent()
    altered = bytearray(signed(model()))
    altered[len(altered) // 2] ^= 0x01  # a weight
    assert refusal(core, signed(model(), key=MALLORY)) is RejectReason.BAD_SIGNATURE
    assert refusal(core, bytes(altered)) is RejectReason.BAD_SIGNATURE
    assert refusal(core, encode_model(model())) is RejectReason.UNSIGNED
    assert core.models_rejected == 3
    assert core.latest_model is None and not core.busy
    # the genuine model then trains as if nothing had happened
    (train,) = core.handle(ModelArrived(signed(model())))
    assert isinstance(train, Train) and np.array_equal(train.model.weights["w"], WEIGHTS["w"])


def test_a_forged_newer_round_does_not_replace_the_genuine_model():
    core = agent()
    core.handle(ModelArrived(signed(model(1))))
    assert refusal(core, signed(model(7, scale=0.0), key=MALLORY)) is RejectReason.BAD_SIGNATURE
    assert core.latest_model is not None and core.latest_model.round == 1


def test_a_forged_final_model_does_not_end_the_run():
    core = agent()
    core.handle(ModelArrived(signed(model(1))))
    assert refusal(core, signed(model(1, done=True), key=MALLORY)) is RejectReason.BAD_SIGNATURE
    (finished,) = core.handle(ModelArrived(signed(model(1, done=True))))
    assert isinstance(finished, RunFinished)


def open_as_coordinator(payload: bytes, keys: dict[str, VerifyKey]) -> bytes:
    return open_update(payload, job="j", run="run1", agent="a1", keys=keys,
                       max_body_bytes=1 << 26)


def test_updates_and_declines_are_signed_by_the_agent_for_the_models_run():
    core = agent()
    (train,) = core.handle(ModelArrived(signed(model(1))))
    assert isinstance(train, Train)
    local = {n: w + 1 for n, w in train.model.weights.items()}
    publish, _sent = core.handle(TrainingDone(train.key, TrainResult(local, 10), 0.1))
    assert isinstance(publish, Publish)
    envelope = msgpack.unpackb(publish.payload)
    assert (envelope["purpose"], envelope["signer"], envelope["run"]) == ("update", "a1", "run1")
    assert open_as_coordinator(publish.payload, {"a1": AGENT.public}) == envelope["body"]
    (train,) = core.handle(ModelArrived(signed(model(2))))
    assert isinstance(train, Train)
    decline, _sent = core.handle(TrainingFailed(train.key, "battery low"))
    assert isinstance(decline, Publish)
    body = open_as_coordinator(decline.payload, {"a1": AGENT.public})
    assert msgpack.unpackb(body)["declined"] == "battery low"


def test_signed_models_and_updates_travel_in_chunks_under_a_payload_cap():
    cap = 4096
    config = RoundConfig(job="j", task="t", rounds=1, plan=TrainPlan(), evaluate=False,
                         max_payload=cap, signing_key=COORDINATOR,
                         agent_keys={"a1": AGENT.public})
    rounds = Rounds(config, WEIGHTS, run="run1")
    core = AgentCore("j", "a1", samples=10, trainer="fake", signing_key=AGENT,
                     coordinator_key=COORDINATOR.public)
    (presence,) = [p for p in core.handle(Connected()) if isinstance(p, Publish)]
    frames = [a.payload for a in rounds.handle(PresenceArrived("a1", presence.payload), 0.0)
              if isinstance(a, Publish) and "/model" in a.topic]
    assert len(frames) > 2 and all(len(f) <= cap and is_chunk_frame(f) for f in frames)
    trains = [a for f in frames for a in core.handle(ModelArrived(f)) if isinstance(a, Train)]
    assert len(trains) == 1
    local = {n: w + 0.25 for n, w in trains[0].model.weights.items()}
    updates = [a.payload for a in core.handle(TrainingDone(trains[0].key, TrainResult(local, 10),
                                                           0.1)) if isinstance(a, Publish)]
    assert len(updates) > 1 and all(is_chunk_frame(u) and len(u) <= cap for u in updates)
    outcomes = [a for u in updates for a in rounds.handle(UpdateArrived("a1", u), 1.0)]
    assert sum(isinstance(a, UpdateAccepted) for a in outcomes) == 1
    assert rounds.completed_rounds == 1
    np.testing.assert_allclose(rounds.weights["w"], WEIGHTS["w"] + 0.25, atol=1e-6)
