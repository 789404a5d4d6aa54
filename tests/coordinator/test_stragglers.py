"""Straggler-aware synchronous rounds (coordinator/stragglers.py), driven by hand: pure,
fake clock, fixed seeds. Over-selection asks more agents than the quorum; --carry-late
keeps their late work for the next round with a staleness weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np
import pytest

from coordinator import (
    Action,
    Evaluate,
    Evaluated,
    PresenceArrived,
    RoundClosed,
    SaveCheckpoint,
    UpdateArrived,
)
from coordinator.checkpoint import CheckpointError, decode_checkpoint, encode_checkpoint
from coordinator.rounds import Rounds
from coordinator.staleness import BufferConfig, staleness_weight, unsupported_in_buffered
from protocol import ModelAnnouncement, RejectReason, Weights
from tests.coordinator.test_buffered import announced, rejections
from tests.coordinator.test_rounds import make_config, make_delta, presence, update_bytes
from tests.helpers import assert_weights_close, copy_weights, initial_weights

RUN = "run1"
AGENTS = ("a0", "a1", "a2", "a3")
W0 = initial_weights()


def start(**config: Any) -> tuple[Rounds, list[Action]]:
    settings: dict[str, Any] = {"min_agents": len(AGENTS), "rounds": 5, "quorum": 2,
                                "over_select": 1.5}
    settings.update(config)
    machine = Rounds(make_config(**settings), copy_weights(W0), run=RUN)
    actions: list[Action] = []
    for agent in AGENTS:
        actions += machine.handle(PresenceArrived(agent, presence(agent)), 0.0)
    return machine, actions


def send(machine: Rounds, agent: str, model: ModelAnnouncement, seed: int,
         samples: int = 10) -> list[Action]:
    payload = update_bytes(agent, model.round, model.model_id, make_delta(seed), samples)
    return machine.handle(UpdateArrived(agent, payload), 1.0)


def closed(actions: Sequence[Action]) -> list[int]:
    return [a.metrics.round for a in actions if isinstance(a, RoundClosed)]


def mean(weights: Weights, terms: Sequence[tuple[float, Weights]]) -> Weights:
    """``weights`` plus the weighted mean of ``terms``, in float64."""
    total = sum(w for w, _ in terms)
    return {n: (a.astype(np.float64) + sum(w * d[n].astype(np.float64) for w, d in terms)
                / total).astype(np.float32) for n, a in weights.items()}


def first_round(**config: Any) -> tuple[Rounds, ModelAnnouncement, str, list[Action]]:
    """Round 1 closed at quorum by two of its three agents; the third is late."""
    machine, actions = start(**config)
    r1 = announced(actions)
    fast = sorted(r1.cohort)[:2]
    send(machine, fast[0], r1, seed=1)
    after = send(machine, fast[1], r1, seed=2)
    assert closed(after) == [1]
    (late,) = set(r1.cohort) - set(fast)
    return machine, r1, late, after


def test_over_selection_asks_ceil_factor_times_quorum_and_closes_at_quorum() -> None:
    _, actions = start()
    r1 = announced(actions)
    assert len(r1.cohort) == 3  # ceil(1.5 * 2) of the four online
    _, _, _, after = first_round()
    assert announced(after).round == 2


def test_without_carry_late_a_late_update_is_stale() -> None:
    machine, r1, late, _ = first_round()
    assert rejections(send(machine, late, r1, seed=3)) == [RejectReason.STALE]
    assert machine.history[0].staleness is None  # metrics as before --carry-late existed


def test_a_carried_update_joins_the_next_round_weighted_by_its_staleness() -> None:
    machine, r1, late, after = first_round(carry_late=1)
    w1 = copy_weights(machine.weights)
    got = send(machine, late, r1, seed=3, samples=20)
    assert rejections(got) == [] and any(isinstance(a, SaveCheckpoint) for a in got)
    r2 = announced(after)
    fresh = sorted(r2.cohort)[:2]
    send(machine, fresh[0], r2, seed=4)
    assert closed(send(machine, fresh[1], r2, seed=5)) == [2]  # quorum counts fresh work only
    # the round's metrics: two fresh updates and one a round late (the views show it)
    assert [m.staleness for m in machine.history] == [{"0": 2}, {"0": 2, "1": 1}]
    late_weight = 20 * staleness_weight("sqrt", 1)
    expected = mean(w1, [(10, make_delta(4)), (10, make_delta(5)),
                         (late_weight, make_delta(3))])
    assert_weights_close(machine.weights, expected)


def test_carried_updates_never_close_a_round_by_themselves() -> None:
    machine, actions = start(carry_late=1, quorum=1, over_select=3.0)
    r1 = announced(actions)
    first, *late = sorted(r1.cohort)
    assert closed(send(machine, first, r1, seed=1)) == [1] and len(late) == 2
    for i, agent in enumerate(late):
        got = send(machine, agent, r1, seed=3 + i)
        assert rejections(got) == [] and closed(got) == []
    assert machine.completed_rounds == 1


def test_each_agent_and_base_round_counts_once() -> None:
    machine, r1, late, _ = first_round(carry_late=2)
    assert rejections(send(machine, late, r1, seed=3)) == []
    assert rejections(send(machine, late, r1, seed=3)) == [RejectReason.DUPLICATE]
    answered = sorted(set(r1.cohort) - {late})[0]
    assert rejections(send(machine, answered, r1, seed=9)) == [RejectReason.DUPLICATE]


def test_late_updates_beyond_carry_late_or_outside_the_cohort_are_refused() -> None:
    machine, r1, late, after = first_round(carry_late=1)
    (outsider,) = set(AGENTS) - set(r1.cohort)
    assert rejections(send(machine, outsider, r1, seed=3)) == [RejectReason.NOT_IN_COHORT]
    r2 = announced(after)
    fresh = sorted(r2.cohort)[:2]
    send(machine, fresh[0], r2, seed=4)
    send(machine, fresh[1], r2, seed=5)  # round 2 closed: round 1 is now two rounds late
    assert rejections(send(machine, late, r1, seed=3)) == [RejectReason.STALE]
    wrong = update_bytes(late, 2, r1.model_id, make_delta(3))  # round 2, round 1's model
    got = machine.handle(UpdateArrived(late, wrong), 2.0)
    assert rejections(got) in ([RejectReason.BASE_MISMATCH], [RejectReason.DUPLICATE])


def test_a_late_update_arriving_during_evaluation_joins_the_next_round() -> None:
    machine, actions = start(carry_late=1, evaluate=True)
    r1 = announced(actions)
    fast = sorted(r1.cohort)[:2]
    send(machine, fast[0], r1, seed=1)
    evaluating = send(machine, fast[1], r1, seed=2)
    assert any(isinstance(a, Evaluate) for a in evaluating)
    (late,) = set(r1.cohort) - set(fast)
    assert rejections(send(machine, late, r1, seed=3)) == []
    opened = machine.handle(Evaluated(1, {"accuracy": 0.5}), 2.0)
    w1, r2 = copy_weights(machine.weights), announced(opened)
    fresh = sorted(r2.cohort)[:2]
    send(machine, fresh[0], r2, seed=4)
    assert any(isinstance(a, Evaluate) for a in send(machine, fresh[1], r2, seed=5))
    assert closed(machine.handle(Evaluated(2, {"accuracy": 0.6}), 3.0)) == [2]
    expected = mean(w1, [(10, make_delta(4)), (10, make_delta(5)),
                         (10 * staleness_weight("sqrt", 1), make_delta(3))])
    assert_weights_close(machine.weights, expected)


def test_resume_keeps_carried_updates_and_who_answered() -> None:
    machine, r1, late, _ = first_round(carry_late=1)
    w1 = copy_weights(machine.weights)
    got = send(machine, late, r1, seed=3)
    (saved,) = [a.checkpoint for a in got if isinstance(a, SaveCheckpoint)]
    ckpt = decode_checkpoint(encode_checkpoint(saved))
    assert [(b.agent, b.base, b.samples) for b in ckpt.buffer] == [(late, 1, 10)]
    resumed = Rounds(machine.config, copy_weights(W0), run=RUN, resume=ckpt)
    actions: list[Action] = []
    for agent in AGENTS:
        actions += resumed.handle(PresenceArrived(agent, presence(agent)), 5.0)
    assert rejections(send(resumed, late, r1, seed=3)) == [RejectReason.DUPLICATE]
    r2 = announced(actions)
    assert r2.round == 2
    fresh = sorted(r2.cohort)[:2]
    send(resumed, fresh[0], r2, seed=4)
    assert closed(send(resumed, fresh[1], r2, seed=5)) == [2]
    expected = mean(w1, [(10, make_delta(4)), (10, make_delta(5)),
                         (10 * staleness_weight("sqrt", 1), make_delta(3))])
    assert_weights_close(resumed.weights, expected)
    assert resumed.checkpoint().buffer == ()  # applied: not carried twice


def test_settings_that_cannot_carry_or_over_select_are_refused() -> None:
    with pytest.raises(ValueError, match="over-selection needs a quorum"):
        make_config(over_select=1.3)
    with pytest.raises(ValueError, match="over-selection"):
        make_config(quorum=2, over_select=1.3, sample_fraction=0.5)
    with pytest.raises(ValueError, match="carry-late"):
        Rounds(make_config(carry_late=1, aggregator="median"), copy_weights(W0), run=RUN)
    with pytest.raises(ValueError, match="staleness"):
        Rounds(make_config(carry_late=1, late_staleness="linear"), copy_weights(W0), run=RUN)
    with pytest.raises(ValueError, match="synchronous only"):
        unsupported_in_buffered(make_config(carry_late=1), BufferConfig())


def test_a_buffered_entry_written_before_sample_counts_existed_still_loads() -> None:
    machine, r1, late, _ = first_round(carry_late=1)
    (saved,) = [a.checkpoint for a in send(machine, late, r1, seed=3)
                if isinstance(a, SaveCheckpoint)]
    doc = msgpack.unpackb(encode_checkpoint(saved), raw=False)
    doc["buffer"] = [entry[:4] for entry in doc["buffer"]]  # as FedBuff wrote them
    (old,) = decode_checkpoint(msgpack.packb(doc, use_bin_type=True)).buffer
    assert (old.agent, old.base, old.samples) == (late, 1, 0)
    doc["buffer"] = [[*entry, 10, "extra"] for entry in doc["buffer"]]
    with pytest.raises(CheckpointError):
        decode_checkpoint(msgpack.packb(doc, use_bin_type=True))
