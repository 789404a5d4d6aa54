"""The agent core in the buffered mode: work on an older version is sent while it is taken."""

from __future__ import annotations

import dataclasses
from collections import deque

from edge_agent.agent import KeepModel, ModelArrived, Train, TrainingDone
from edge_agent.events import AgentEvent, MessagesLost, defer
from protocol import decode_model, encode_model
from protocol.chunks import is_chunk_frame, split
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


def test_a_queued_whole_model_gives_way_to_a_newer_one_and_the_gap_is_told() -> None:
    queue: deque[AgentEvent] = deque()
    split_model = split(bytes(3000), 1024)  # any payload: only the frames matter here
    assert split_model is not None
    chunk = ModelArrived(split_model[1][0])
    dropped: list[AgentEvent] = []
    for event in (ModelArrived(buffered(2, 5)), chunk, ModelArrived(buffered(3, 5)),
                  ModelArrived(buffered(4, 5))):
        dropped += defer(queue, event, whole_model=whole_model, lost=MessagesLost())
    assert list(queue) == [chunk, MessagesLost(), ModelArrived(buffered(4, 5))]
    assert dropped == [ModelArrived(buffered(2, 5)), ModelArrived(buffered(3, 5))]


def whole_model(event: AgentEvent) -> bool:
    return isinstance(event, ModelArrived) and not is_chunk_frame(event.payload)


def test_after_the_told_gap_the_core_trains_the_newest_version_it_was_given() -> None:
    core = agent()
    old = only(core.handle(ModelArrived(buffered(1, 5))), Train)
    result = trainer().train(old.model.weights, old.model.plan, 1)
    core.handle(TrainingDone(old.key, result, 1.0))
    core.handle(MessagesLost())  # what defer() queued in place of versions 2 to 4
    new = only(core.handle(ModelArrived(buffered(5, 5))), Train)
    assert new.model.round == 5  # an unsigned jump, taken because the gap was told
