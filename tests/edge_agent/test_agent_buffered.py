"""The agent core in the buffered mode: work on an older version is sent while it is taken."""

from __future__ import annotations

import dataclasses

from edge_agent.agent import KeepModel, ModelArrived, Train, TrainingDone
from protocol import decode_model, encode_model
from tests.edge_agent.test_agent_core import agent, announce, only, sent_update, trainer


def buffered(round_no: int, max_staleness: int) -> bytes:
    """``announce(round_no)`` as the buffered mode says it: with its ``max_staleness``."""
    model = decode_model(announce(round_no))
    return encode_model(dataclasses.replace(model, max_staleness=max_staleness))


def test_a_result_on_an_older_version_is_sent_then_the_newest_is_trained() -> None:
    core = agent()
    old = only(core.handle(ModelArrived(buffered(1, 2))), Train)
    (kept,) = core.handle(ModelArrived(buffered(2, 2)))  # busy: picked up afterwards
    assert isinstance(kept, KeepModel) and kept.held.round == 2  # the version now held
    result = trainer().train(old.model.weights, old.model.plan, 1)

    actions = core.handle(TrainingDone(old.key, result, 1.0))

    _, update = sent_update(actions[:-1])
    assert (update.round, update.model_id) == (1, old.key[2])  # tagged with its base version
    new = only(actions, Train)
    assert actions[-1] == new and new.model.round == 2


def test_a_result_beyond_the_announced_staleness_is_dropped() -> None:
    core = agent()
    old = only(core.handle(ModelArrived(buffered(1, 1))), Train)
    core.handle(ModelArrived(buffered(2, 1)))  # a connected agent sees every version
    core.handle(ModelArrived(buffered(3, 1)))
    result = trainer().train(old.model.weights, old.model.plan, 1)

    actions = core.handle(TrainingDone(old.key, result, 1.0))

    assert actions == [only(actions, Train)]  # nothing published: version 1 is too old
