"""The buffered asynchronous (FedBuff) machine, driven by hand: pure, fake clock, fixed seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from coordinator import (
    Action,
    MessageRejected,
    PresenceArrived,
    RoundClosed,
    SaveCheckpoint,
    Stop,
    Tick,
    UpdateAccepted,
    UpdateArrived,
)
from coordinator.buffered import BufferedRounds
from coordinator.checkpoint import decode_checkpoint, encode_checkpoint
from coordinator.config import RoundConfig
from coordinator.staleness import BufferConfig, staleness_weight, unsupported_in_buffered
from protocol import (
    ModelAnnouncement,
    Publish,
    RejectReason,
    Weights,
    decode_model,
    decode_status,
)
from tests.coordinator.test_rounds import make_config, make_delta, presence, update_bytes
from tests.helpers import assert_weights_close, copy_weights, initial_weights, weights_equal

RUN = "run1"
AGENTS = ("a0", "a1", "a2", "a3")
W0 = initial_weights()


def start(
    buffer: BufferConfig, agents: Sequence[str] = AGENTS, **config: Any
) -> tuple[BufferedRounds, list[Action]]:
    settings: dict[str, Any] = {"min_agents": len(agents), "rounds": 10}
    settings.update(config)
    machine = BufferedRounds(make_config(**settings), buffer, copy_weights(W0), run=RUN)
    actions: list[Action] = []
    for agent in agents:
        actions += machine.handle(PresenceArrived(agent, presence(agent)), 0.0)
    return machine, actions


def announced(actions: Sequence[Action]) -> ModelAnnouncement:
    """The last model announcement among ``actions``."""
    models = [a for a in actions if isinstance(a, Publish) and a.topic.endswith("/model")]
    assert models, "no model was announced"
    return decode_model(models[-1].payload)


def send(
    machine: BufferedRounds, agent: str, model: ModelAnnouncement, seed: int
) -> list[Action]:
    payload = update_bytes(agent, model.round, model.model_id, make_delta(seed))
    return machine.handle(UpdateArrived(agent, payload), 1.0)


def rejections(actions: Sequence[Action]) -> list[RejectReason]:
    return [a.reason for a in actions if isinstance(a, MessageRejected)]


def plus(weights: Weights, *terms: tuple[float, Weights]) -> Weights:
    return {
        n: (w.astype(np.float64) + sum(c * d[n].astype(np.float64) for c, d in terms)).astype(
            np.float32
        )
        for n, w in weights.items()
    }


def test_staleness_weights_default_to_inverse_square_root() -> None:
    assert staleness_weight("sqrt", 0) == 1.0
    assert staleness_weight("sqrt", 3) == 0.5
    assert staleness_weight("const", 7) == 1.0
    assert staleness_weight("poly:1", 1) == 0.5
    with pytest.raises(ValueError, match="staleness"):
        BufferConfig(staleness="linear")


def test_version_one_is_announced_naming_every_agent_with_max_staleness() -> None:
    _, actions = start(BufferConfig(k=2, max_staleness=3))
    model = announced(actions)
    assert model.round == 1
    assert model.cohort == AGENTS
    assert model.max_staleness == 3
    assert weights_equal(model.weights, W0)


def test_k_updates_flush_the_buffer_and_publish_the_next_version() -> None:
    machine, actions = start(BufferConfig(k=2))
    v1 = announced(actions)
    first = send(machine, "a0", v1, seed=1)
    assert [a.accepted for a in first if isinstance(a, UpdateAccepted)] == [1]
    assert any(isinstance(a, SaveCheckpoint) for a in first)  # the buffer survives a crash
    assert machine.version == 1
    second = send(machine, "a1", v1, seed=2)
    closed = [a for a in second if isinstance(a, RoundClosed)]
    assert len(closed) == 1 and closed[0].metrics.round == 1 and closed[0].metrics.accepted == 2
    v2 = announced(second)
    assert v2.round == 2 and machine.version == 2
    expected = plus(W0, (0.5, make_delta(1)), (0.5, make_delta(2)))
    assert_weights_close(machine.weights, expected)
    assert weights_equal(v2.weights, machine.weights)


def test_a_stale_update_is_weighted_by_its_staleness() -> None:
    machine, actions = start(BufferConfig(k=1, max_staleness=2))
    v1 = announced(actions)
    send(machine, "a1", v1, seed=2)  # flush: version 2
    w1 = copy_weights(machine.weights)
    late = send(machine, "a0", v1, seed=1)  # trained on version 1, arrives at version 2
    assert rejections(late) == []
    assert_weights_close(machine.weights, plus(w1, (2**-0.5, make_delta(1))))


def test_an_update_beyond_max_staleness_is_rejected_as_stale() -> None:
    machine, actions = start(BufferConfig(k=1, max_staleness=1))
    v1 = announced(actions)
    v2 = announced(send(machine, "a1", v1, seed=1))
    send(machine, "a2", v2, seed=2)  # version 3: version 1 now lags by 2
    weights = copy_weights(machine.weights)
    late = send(machine, "a0", v1, seed=3)
    assert rejections(late) == [RejectReason.STALE]
    assert weights_equal(machine.weights, weights)
    assert machine.rejected_total == {"stale": 1}


def test_each_agent_and_version_counts_once() -> None:
    machine, actions = start(BufferConfig(k=3))
    v1 = announced(actions)
    send(machine, "a0", v1, seed=1)
    again = send(machine, "a0", v1, seed=1)
    assert rejections(again) == [RejectReason.DUPLICATE]
    assert machine.buffer_fill == 1


def test_an_update_from_a_future_version_or_another_base_is_refused() -> None:
    machine, actions = start(BufferConfig(k=3))
    v1 = announced(actions)
    future = update_bytes("a0", 2, v1.model_id, make_delta(1))
    assert rejections(machine.handle(UpdateArrived("a0", future), 1.0)) == [
        RejectReason.FUTURE_ROUND
    ]
    wrong = update_bytes("a0", 1, "0" * 64, make_delta(1))
    assert rejections(machine.handle(UpdateArrived("a0", wrong), 1.0)) == [
        RejectReason.BASE_MISMATCH
    ]
    assert machine.buffer_fill == 0


def test_a_topic_level_that_is_no_agent_id_is_counted_as_malformed_here_too() -> None:
    machine, actions = start(BufferConfig(k=2, concurrency=4))
    model = announced(actions)
    payload = update_bytes("a0", model.round, model.model_id, make_delta(0))
    refused = [*machine.handle(UpdateArrived("bad id", payload), 1.0),
               *machine.handle(PresenceArrived("-x", presence("a0")), 1.0)]
    assert rejections(refused) == [RejectReason.MALFORMED, RejectReason.MALFORMED]
    assert machine.rejected_total == {"malformed": 2} and machine.buffer_fill == 0


def test_the_concurrency_limit_is_enforced_through_the_announcement() -> None:
    machine, actions = start(BufferConfig(k=3, concurrency=2))
    v1 = announced(actions)
    assert v1.cohort is not None and len(v1.cohort) == 2
    outsider = next(a for a in AGENTS if a not in v1.cohort)
    refused = send(machine, outsider, v1, seed=9)
    assert rejections(refused) == [RejectReason.NOT_IN_COHORT]
    # One named agent answers: its slot goes to an idle agent, re-announced by name.
    after = send(machine, v1.cohort[0], v1, seed=1)
    again = announced(after)
    assert again.round == 1 and again.cohort is not None and len(again.cohort) == 3
    assert set(v1.cohort) < set(again.cohort)
    assert len(machine.outstanding) == 2


def test_resume_mid_buffer_from_a_checkpoint_gives_the_uninterrupted_model() -> None:
    buffer = BufferConfig(k=3)
    straight, actions = start(buffer)
    v1 = announced(actions)
    for seed, agent in enumerate(AGENTS[:3]):
        send(straight, agent, v1, seed)

    machine, actions = start(buffer)
    v1 = announced(actions)
    saved = [a for a in send(machine, "a0", v1, 0) + send(machine, "a1", v1, 1)
             if isinstance(a, SaveCheckpoint)]
    checkpoint = decode_checkpoint(encode_checkpoint(saved[-1].checkpoint))
    assert len(checkpoint.buffer) == 2 and checkpoint.round == 0
    resumed = BufferedRounds(make_config(min_agents=4, rounds=10), buffer, copy_weights(W0),
                             run="other", resume=checkpoint)
    for agent in AGENTS:
        resumed.handle(PresenceArrived(agent, presence(agent)), 0.0)
    assert resumed.run == RUN and resumed.buffer_fill == 2
    assert rejections(send(resumed, "a0", v1, 0)) == [RejectReason.DUPLICATE]
    send(resumed, "a2", v1, 2)
    assert resumed.version == 2
    assert weights_equal(resumed.weights, straight.weights)


def test_the_run_stops_after_the_configured_number_of_versions() -> None:
    machine, actions = start(BufferConfig(k=1), rounds=2)
    v2 = announced(send(machine, "a0", announced(actions), seed=1))
    end = send(machine, "a1", v2, seed=2)
    assert [a.message for a in end if isinstance(a, Stop)] == ["completed 2 rounds"]
    assert announced(end).done


def test_an_agent_going_offline_hands_its_slot_on() -> None:
    machine, actions = start(BufferConfig(k=3, concurrency=2))
    v1 = announced(actions)
    assert v1.cohort is not None
    gone = v1.cohort[0]
    after = machine.handle(PresenceArrived(gone, presence(gone, online=False)), 1.0)
    again = announced(after)
    assert again.cohort is not None and len(set(again.cohort) - set(v1.cohort)) == 1
    assert len(machine.outstanding) == 2 and gone not in machine.outstanding
    back = machine.handle(PresenceArrived(gone, presence(gone)), 2.0)
    assert len(machine.outstanding) == 2 and not [a for a in back if isinstance(a, Publish)
                                                  and a.topic.endswith("/model")]
    assert rejections(send(machine, gone, v1, seed=5)) == [RejectReason.NOT_IN_COHORT]


@pytest.mark.parametrize("setting", [
    {"dp_noise": 1.0, "dp_clip": 1.0},
    {"aggregator": "median"},
    {"clip_norm": 1.0},
    {"sample_fraction": 0.5},
])
def test_settings_the_buffered_mode_cannot_honour_are_refused_not_ignored(
    setting: dict[str, object],
) -> None:
    config = RoundConfig(job="j", task="linreg", rounds=3, **setting)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--mode fedbuff does not support"):
        unsupported_in_buffered(config, BufferConfig(k=2))


def test_the_status_is_paced_here_too_and_a_held_back_one_goes_out_when_due() -> None:
    agents = [f"a{k}" for k in range(1000)]
    machine = BufferedRounds(make_config(min_agents=2000, rounds=10, status_interval_s=0.5),
                             BufferConfig(k=2), copy_weights(W0), run=RUN)
    statuses: list[Publish] = []
    for k, agent in enumerate(agents):  # a fleet announcing itself over 0.999 s
        out = machine.handle(PresenceArrived(agent, presence(agent)), 0.001 * k)
        statuses += [a for a in out if isinstance(a, Publish) and a.topic.endswith("/status")]
    assert len(statuses) == 2  # at 0 s and 0.5 s, not 1000
    due = machine.next_deadline()
    assert due == 1.0  # the change held back since 0.5 s
    (last,) = machine.handle(Tick(), due)
    assert isinstance(last, Publish) and decode_status(last.payload).agents_online == 1000
    assert machine.next_deadline() is None
