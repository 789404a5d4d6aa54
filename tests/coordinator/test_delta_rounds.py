"""Whole runs with delta-coded models (docs/PROTOCOL.md §15) through the Fleet, pure.

One coordinator core and several agent cores through the real encoders, a fake broker
that honours each agent's subscriptions and retained messages, and a fake clock. What
must hold: every agent trains only on the coordinator's exact version of the broadcast
model; after the first round agents take deltas only; a late joiner, a restarted agent,
a lost delta and a resumed coordinator all end in the same place; and the bytes the
metrics count down are the bytes the broker delivered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from coordinator import (
    Action,
    RoundClosed,
    RoundConfig,
    RoundOpened,
    SaveCheckpoint,
    load_checkpoint,
)
from coordinator.buffered import BufferedRounds
from coordinator.staleness import BufferConfig
from edge_agent.agent import Subscribe, Train, Unsubscribe
from protocol import Phase, Publish, TopicKind, decode_model, parse_topic, weights_digest
from tests.helpers import Fleet, initial_weights, weights_equal

JOB, TASK = "deltas", "linreg"
CODEC = "int8+zstd"


def config(**overrides: object) -> RoundConfig:
    settings: dict[str, object] = {
        "job": JOB, "task": TASK, "rounds": 6, "deadline_s": 10.0, "min_agents": 3,
        "downlink_delta": CODEC,
    }
    settings.update(overrides)
    return RoundConfig(**settings)  # type: ignore[arg-type]


def announced_ids(fleet: Fleet) -> dict[int, set[str]]:
    """Round -> the model ids its whole-model announcements named (weights checked)."""
    ids: dict[int, set[str]] = {}
    for a in fleet.of_type(Publish):
        if a.topic == fleet.rounds.topics.model:
            model = decode_model(a.payload)
            assert weights_digest(model.weights) == model.model_id
            ids.setdefault(model.round, set()).add(model.model_id)
    return ids


def assert_trained_only_on_announced_versions(fleet: Fleet) -> None:
    ids = announced_ids(fleet)
    for agent, actions in fleet.agent_actions.items():
        for train in (a for a in actions if isinstance(a, Train)):
            assert weights_digest(train.model.weights) == train.model.model_id, agent
            assert train.model.model_id in ids[train.model.round], agent


def count_received_per_round(fleet: Fleet) -> list[int]:
    """Install a hook recording what agents received by each round's close."""
    totals: list[int] = []

    def hook(f: Fleet, action: Action) -> None:
        if isinstance(action, RoundClosed):
            totals.append(sum(f.stats.received.values()))

    fleet.on_action = hook
    return totals


@pytest.mark.parametrize("delta", [CODEC, None], ids=["deltas", "whole-models"])
def test_bytes_down_are_the_bytes_the_broker_delivered(delta: str | None) -> None:
    fleet = Fleet(3, config(downlink_delta=delta))
    totals = count_received_per_round(fleet)
    fleet.start()
    assert fleet.rounds.phase is Phase.DONE and fleet.rejections() == []
    delivered = [b - a for a, b in zip([0, *totals], totals, strict=False)]
    closed = fleet.closed()
    assert [m.bytes_down for m in closed] == delivered
    assert all(m.addressed == 3 and m.raw_bytes_down == 3 * 4 * 10 for m in closed)
    assert_trained_only_on_announced_versions(fleet)
    if delta is not None:  # from round 2 on, each agent got a delta only
        assert all(m.bytes_down < closed[0].bytes_down for m in closed[1:])


def test_agents_take_deltas_after_the_first_round_and_train_on_the_exact_versions() -> None:
    fleet = Fleet(3, config())
    fleet.start()
    assert fleet.rounds.phase is Phase.DONE and fleet.rejections() == []
    assert [m.accepted for m in fleet.closed()] == [3] * 6
    final = fleet.retained_model()
    for agent, actions in fleet.agent_actions.items():
        fetches = [a for a in actions if isinstance(a, Subscribe | Unsubscribe)]
        assert fetches == [Unsubscribe(fleet.rounds.topics.model_family)], agent
        assert fleet.rounds.topics.model not in fleet.subscribed[agent]
        held = fleet.agents[agent].held
        assert held is not None and held.done and weights_equal(held.weights, final.weights)
    assert_trained_only_on_announced_versions(fleet)


def test_the_broadcast_model_follows_the_global_model_and_the_final_model_is_its_version() -> None:
    lossless = Fleet(3, config(downlink_delta=None))
    lossless.start()
    fleet = Fleet(3, config())
    fleet.start()
    final = fleet.retained_model()
    assert final.model_id == weights_digest(final.weights)
    for name, g in fleet.weights.items():
        # one int8 step of the last round's change separates them, no more
        assert np.abs(final.weights[name] - g).max() < 1e-2
        np.testing.assert_allclose(fleet.weights[name], lossless.weights[name], atol=2e-2)


def test_a_late_joiner_fetches_the_whole_model_once_then_takes_deltas() -> None:
    fleet = Fleet(4, config(min_agents=3))
    fleet.links["a3"].dead = True  # not there yet

    def hook(f: Fleet, action: Action) -> None:
        if isinstance(action, RoundOpened) and action.round_no == 3:
            f.reconnect("a3")

    fleet.on_action = hook
    fleet.start()
    assert fleet.rounds.phase is Phase.DONE
    # round 3 closed at quorum before the newcomer's answer: stale, as without deltas
    assert [(r.agent, r.round_no, r.reason.value) for r in fleet.rejections()] == [
        ("a3", 4, "stale")
    ]
    assert [m.accepted for m in fleet.closed()][3:] == [4, 4, 4]
    late = fleet.agent_actions["a3"]
    fetches = [a for a in late if isinstance(a, Subscribe | Unsubscribe)]
    assert fetches == [Unsubscribe(fleet.rounds.topics.model_family)]  # whole once, then deltas
    rounds = [t.model.round for t in late if isinstance(t, Train)]
    assert rounds and rounds[0] >= 3 and rounds == sorted(rounds)
    assert_trained_only_on_announced_versions(fleet)


def test_an_agent_restarted_mid_run_continues_from_its_kept_version_with_deltas() -> None:
    fleet = Fleet(3, config())
    restarted: list[int] = []

    def hook(f: Fleet, action: Action) -> None:
        if isinstance(action, RoundOpened) and action.round_no == 4 and not restarted:
            restarted.append(len(f.agent_actions["a1"]))
            f.restart_agent("a1")

    fleet.on_action = hook
    fleet.start()
    assert fleet.rounds.phase is Phase.DONE and fleet.rejections() == []
    after = fleet.agent_actions["a1"][restarted[0]:]
    assert not [a for a in after if isinstance(a, Subscribe)]  # never fetched the whole model
    assert [t.model.round for t in after if isinstance(t, Train)] == [4, 5, 6]
    assert [m.accepted for m in fleet.closed()] == [3] * 6
    assert_trained_only_on_announced_versions(fleet)


def test_a_lost_delta_makes_the_agent_fetch_the_whole_model_and_the_run_completes() -> None:
    fleet = Fleet(3, config(quorum=3))

    def hook(f: Fleet, action: Action) -> None:
        if isinstance(action, RoundClosed) and action.metrics.round == 1:
            f.links["a2"].drop_down = 1  # round 2's delta never reaches a2

    fleet.on_action = hook
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE and fleet.rejections() == []
    a2 = fleet.agent_actions["a2"]
    assert Subscribe(fleet.rounds.topics.model_family) in a2  # it fell back ...
    assert [m.round for m in fleet.closed() if m.accepted == 3][-1] == 6  # ... and took part
    assert_trained_only_on_announced_versions(fleet)


def crash_after_checkpoint(round_no: int) -> Callable[[Fleet, Action], None]:
    def hook(fleet: Fleet, action: Action) -> None:
        if isinstance(action, SaveCheckpoint) and action.checkpoint.round == round_no:
            fleet.crash_coordinator()

    return hook


def test_a_resumed_coordinator_continues_the_chain_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    uninterrupted = Fleet(3, config(codec="qsgd:2+zstd", downlink_delta="qsgd:2+zstd"))
    uninterrupted.start()
    fleet = Fleet(3, config(codec="qsgd:2+zstd", downlink_delta="qsgd:2+zstd"),
                  checkpoint_path=path)
    fleet.on_action = crash_after_checkpoint(3)
    fleet.start()
    assert not fleet.coordinator_up
    assert load_checkpoint(path).broadcast is not None
    fleet.on_action = None
    fleet.now += 5.0

    fleet.restart_coordinator(resume=load_checkpoint(path))

    assert fleet.rounds.phase is Phase.DONE and fleet.rejections() == []
    assert weights_equal(fleet.weights, uninterrupted.weights)
    assert fleet.retained_model().model_id == uninterrupted.retained_model().model_id
    for agent in fleet.agent_ids:  # the agents followed by deltas across the restart
        assert not [a for a in fleet.agent_actions[agent] if isinstance(a, Subscribe)]


def test_float16_deltas_keep_every_version_a_float16_model() -> None:
    fleet = Fleet(3, config(downlink="fp16"))
    fleet.start()
    assert fleet.rounds.phase is Phase.DONE and fleet.rejections() == []
    final = fleet.retained_model()
    for a in final.weights.values():
        assert np.array_equal(a.astype(np.float16).astype(np.float32), a)
    assert_trained_only_on_announced_versions(fleet)
    model_publishes = [a for a in fleet.of_type(Publish)
                       if parse_topic(a.topic).kind is TopicKind.MODEL]
    assert model_publishes  # the whole model stays retained for newcomers, as float16


def test_the_buffered_mode_refuses_delta_coded_models_rather_than_ignore_them() -> None:
    with pytest.raises(ValueError, match="--downlink-delta"):
        BufferedRounds(config(), BufferConfig(k=2), initial_weights(), run="r")
