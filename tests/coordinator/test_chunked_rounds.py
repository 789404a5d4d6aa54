"""Chunked transfer inside the cores: models out and updates in, under a payload cap."""

from __future__ import annotations

import msgpack
import numpy as np

from coordinator import MessageRejected, Publish, RoundConfig, Rounds, UpdateAccepted, UpdateArrived
from coordinator.events import PresenceArrived
from edge_agent.agent import AgentCore, Connected, ModelArrived, Train, TrainingDone
from edge_agent.trainer import TrainResult
from protocol import RejectReason, TrainPlan, decode_model
from protocol.chunks import is_chunk_frame

CAP = 4096
WEIGHTS = {"w": np.arange(6000, dtype=np.float32).reshape(60, 100) / 6000,
           "b": np.zeros(100, np.float32)}


def coordinator(**overrides: object) -> Rounds:
    settings: dict[str, object] = {"job": "j", "task": "t", "rounds": 1, "min_agents": 1,
                                   "plan": TrainPlan(), "evaluate": False, "max_payload": CAP}
    settings.update(overrides)
    return Rounds(RoundConfig(**settings), WEIGHTS, run="r")  # type: ignore[arg-type]


def join(rounds: Rounds, agent: AgentCore) -> list[Publish]:
    (presence,) = [a for a in agent.handle(Connected()) if isinstance(a, Publish)]
    return [a for a in rounds.handle(PresenceArrived(agent.agent, presence.payload), 0.0)
            if isinstance(a, Publish)]


def test_the_model_is_retained_as_chunks_then_a_manifest_and_reassembles() -> None:
    rounds, agent = coordinator(), AgentCore("j", "a1", samples=5, trainer="fake")
    publishes = [p for p in join(rounds, agent) if "/model" in p.topic]
    *chunks, manifest = publishes
    assert manifest.topic == "fedmq/v1/j/model" and manifest.retain
    assert [p.topic for p in chunks] == [f"fedmq/v1/j/model/chunk/{i}" for i in range(len(chunks))]
    assert all(p.retain and len(p.payload) <= CAP and is_chunk_frame(p.payload) for p in chunks)
    # Delivered in reverse with a duplicate, the agent still trains exactly once.
    actions = [a for p in [*reversed(chunks), chunks[0], manifest]
               for a in agent.handle(ModelArrived(p.payload))]
    (train,) = [a for a in actions if isinstance(a, Train)]
    assert np.array_equal(train.model.weights["w"], WEIGHTS["w"])
    assert train.model.max_payload == CAP


def test_a_chunked_update_is_accepted_once_whole() -> None:
    rounds, agent = coordinator(), AgentCore("j", "a1", samples=5, trainer="fake")
    frames = chunked_update(rounds, agent)
    assert len(frames) > 1 and all(len(f.payload) <= CAP for f in frames)
    outcomes = [a for f in frames for a in rounds.handle(UpdateArrived("a1", f.payload), 1.0)]
    assert sum(isinstance(a, UpdateAccepted) for a in outcomes) == 1
    np.testing.assert_allclose(rounds.weights["w"], WEIGHTS["w"] + 0.5, atol=1e-6)
    assert rounds.history[0].bytes_up == sum(len(f.payload) for f in frames)


def chunked_update(rounds: Rounds, agent: AgentCore) -> list[Publish]:
    model_parts = [p for p in join(rounds, agent) if "/model" in p.topic]
    train = next(a for p in model_parts for a in agent.handle(ModelArrived(p.payload))
                 if isinstance(a, Train))
    local = {n: w + 0.5 for n, w in train.model.weights.items()}
    return [a for a in agent.handle(TrainingDone(train.key, TrainResult(local, 5), 0.1))
            if isinstance(a, Publish)]


def test_a_bad_chunk_is_rejected_counted_and_changes_nothing() -> None:
    rounds, agent = coordinator(), AgentCore("j", "a1", samples=5, trainer="fake")
    first, *rest = chunked_update(rounds, agent)
    (reject,) = rounds.handle(UpdateArrived("a1", first.payload[:-3]), 1.0)
    assert isinstance(reject, MessageRejected) and reject.reason is RejectReason.MALFORMED
    assert rounds.rejected_total == {"malformed": 1}
    assert rounds.completed_rounds == 0
    # The intact frames still make the update whole.
    outcomes = [a for f in [first, *rest] for a in rounds.handle(UpdateArrived("a1", f.payload),
                                                                 2.0)]
    assert sum(isinstance(a, UpdateAccepted) for a in outcomes) == 1


def test_chunks_with_a_bad_digest_or_of_a_rejected_set_are_counted_not_dropped() -> None:
    rounds, agent = coordinator(), AgentCore("j", "a1", samples=5, trainer="fake")
    first, second, *rest = chunked_update(rounds, agent)
    upper = msgpack.unpackb(first.payload)
    upper["digest"] = upper["digest"].upper()
    altered = msgpack.unpackb(second.payload)
    altered["data"] = bytes(len(altered["data"]))  # the set will not match its digest
    frames = [msgpack.packb(upper), first.payload, msgpack.packb(altered),
              *(f.payload for f in rest), first.payload]  # ... and a late frame of that set
    reasons = [a.reason for f in frames for a in rounds.handle(UpdateArrived("a1", f), 1.0)
               if isinstance(a, MessageRejected)]
    assert reasons == [RejectReason.MALFORMED] * 3
    assert rounds.rejected_total == {"malformed": 3}
    assert rounds.completed_rounds == 0


def test_without_a_cap_the_model_travels_whole() -> None:
    rounds, agent = coordinator(max_payload=0), AgentCore("j", "a1", samples=5, trainer="fake")
    (model,) = [p for p in join(rounds, agent) if "/model" in p.topic]
    assert decode_model(model.payload).max_payload == 0
