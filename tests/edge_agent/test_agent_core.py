"""The agent core: announcements in, training requests and updates out; no broker, no clock."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np
import pytest

from edge_agent.agent import (
    AgentAction,
    AgentCore,
    Connected,
    KeepModel,
    ModelArrived,
    ModelRejected,
    RunFinished,
    ShutdownRequested,
    Train,
    TrainingDone,
    TrainingFailed,
    UpdateSent,
)
from edge_agent.trainer import TrainResult
from protocol import (
    ModelAnnouncement,
    Publish,
    RejectReason,
    TopicKind,
    TrainPlan,
    Update,
    Weights,
    decode_delta,
    decode_model,
    decode_presence,
    decode_update,
    encode_model,
    parse_topic,
    weights_digest,
)
from protocol.cohort_hash import CohortHash, in_cohort
from tests.helpers import LinearTrainer, copy_weights, initial_weights, weights_equal

JOB, AGENT, RUN = "job1", "a1", "run1"
W0 = initial_weights()
SHAPES = {name: arr.shape for name, arr in W0.items()}


def announce(
    round_no: int = 1,
    *,
    attempt: int = 0,
    run: str = RUN,
    job: str = JOB,
    weights: Weights | None = None,
    cohort: tuple[str, ...] | None = None,
    done: bool = False,
    issued_at: float = 1000.0,
    codec: str = "none",
) -> bytes:
    w = weights if weights is not None else shifted(W0, round_no)
    return encode_model(
        ModelAnnouncement(
            job=job,
            run=run,
            round=round_no,
            attempt=attempt,
            model_id=weights_digest(w),
            task="linreg",
            plan=TrainPlan(epochs=1, batch_size=4, lr=0.1),
            codec=codec,
            deadline_s=30.0,
            weights=w,
            cohort=cohort,
            done=done,
            issued_at=issued_at,
        )
    )


def shifted(weights: Weights, by: float) -> Weights:
    """A distinct global model per round, so each round has its own model id."""
    return {n: (a + np.float32(by)).astype(np.float32) for n, a in weights.items()}


def agent() -> AgentCore:
    return AgentCore(JOB, AGENT, samples=20, trainer="numpy-linreg", device="rpi4")


def trainer() -> LinearTrainer:
    return LinearTrainer(index=1, samples=20)


def only(actions: list[AgentAction], kind: type[Any]) -> Any:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {actions}"
    return found[0]


def train_and_answer(core: AgentCore, payload: bytes) -> tuple[Train, list[AgentAction]]:
    """Deliver an announcement, run the fake trainer on the Train it asks for, feed it back."""
    train = only(core.handle(ModelArrived(payload)), Train)
    result = trainer().train(train.model.weights, train.model.plan, train.model.round)
    return train, core.handle(TrainingDone(train.key, result, 0.5))


def sent_update(actions: list[AgentAction]) -> tuple[Publish, Update]:
    publish = only(actions, Publish)
    assert parse_topic(publish.topic).kind is TopicKind.UPDATE
    assert parse_topic(publish.topic).agent == AGENT
    assert not publish.retain
    return publish, decode_update(publish.payload)


# --- one training per (run, round, model) ---------------------------------------------------------


def test_announcement_asks_for_training_once_with_the_round_key() -> None:
    core = agent()
    payload = announce(1)

    actions = core.handle(ModelArrived(payload))

    train = only(actions, Train)
    assert actions == [train]
    assert train.key == (RUN, 1, weights_digest(shifted(W0, 1)))
    assert weights_equal(train.model.weights, shifted(W0, 1))
    assert core.busy
    assert core.handle(ModelArrived(payload)) == []  # redelivered while training


def test_trained_result_is_published_once_as_an_update_of_local_minus_global() -> None:
    core = agent()
    train, actions = train_and_answer(core, announce(1))

    publish, update = sent_update(actions)
    assert only(actions, UpdateSent) == UpdateSent(train.key, len(publish.payload), resent=False)
    assert (update.job, update.agent, update.round, update.model_id) == (
        JOB,
        AGENT,
        1,
        train.key[2],
    )
    assert (update.samples, update.codec, update.declined, update.train_s) == (
        20,
        "none",
        None,
        0.5,
    )
    local = trainer().train(train.model.weights, train.model.plan, 1)
    assert update.metrics == local.metrics
    delta = decode_delta(update.tensors, "none", SHAPES)
    for name, global_w in train.model.weights.items():
        expected = local.weights[name] - global_w
        assert delta[name].dtype == np.float32
        assert np.array_equal(delta[name], expected)  # bit for bit under codec "none"
    assert not core.busy


def test_fp16_codec_sends_half_precision_delta() -> None:
    core = agent()
    train, actions = train_and_answer(core, announce(1, codec="fp16"))

    _, update = sent_update(actions)
    assert update.codec == "fp16"
    assert {t["dtype"] for t in update.tensors} == {"<f2"}
    local = trainer().train(train.model.weights, train.model.plan, 1)
    delta = decode_delta(update.tensors, "fp16", SHAPES)
    for name, global_w in train.model.weights.items():
        expected = (local.weights[name] - global_w).astype(np.float16).astype(np.float32)
        assert np.array_equal(delta[name], expected)


def test_redelivered_identical_announcement_after_answering_does_nothing() -> None:
    core = agent()
    payload = announce(1)
    train_and_answer(core, payload)

    assert core.handle(ModelArrived(payload)) == []
    assert core.handle(ModelArrived(payload)) == []
    assert not core.busy


def test_retry_announcement_resends_the_cached_bytes_without_training() -> None:
    core = agent()
    train, first = train_and_answer(core, announce(1))
    original, _ = sent_update(first)

    retry = core.handle(ModelArrived(announce(1, attempt=1, issued_at=1030.0)))

    publish = only(retry, Publish)
    assert publish == original  # the very same bytes: the coordinator counts them once
    assert only(retry, UpdateSent) == UpdateSent(train.key, len(original.payload), resent=True)
    assert not any(isinstance(a, Train) for a in retry)
    # the retry announcement redelivered is a duplicate, not another request
    assert core.handle(ModelArrived(announce(1, attempt=1, issued_at=1030.0))) == []


def test_reannouncement_by_a_restarted_coordinator_resends_the_cached_answer() -> None:
    core = agent()
    _, first = train_and_answer(core, announce(1, issued_at=1000.0))
    original, _ = sent_update(first)

    again = core.handle(ModelArrived(announce(1, issued_at=2000.0)))  # same key, new process

    assert only(again, Publish) == original
    assert not any(isinstance(a, Train) for a in again)


def test_reconnect_then_retained_model_resends_the_cached_answer_once() -> None:
    core = agent()
    payload = announce(1)
    _, first = train_and_answer(core, payload)
    original, _ = sent_update(first)

    on_connect = core.handle(Connected(), wall=5000.0)
    assert parse_topic(only(on_connect, Publish).topic).kind is TopicKind.AGENTS
    retained = core.handle(ModelArrived(payload))

    assert only(retained, Publish) == original
    assert only(retained, UpdateSent).resent
    assert core.handle(ModelArrived(payload)) == []  # only the first delivery re-sends


def test_connect_before_any_answer_trains_on_the_retained_model() -> None:
    core = agent()
    core.handle(Connected(), wall=1.0)
    assert only(core.handle(ModelArrived(announce(1))), Train).key[1] == 1


def test_each_new_round_is_trained_once() -> None:
    core = agent()
    keys = []
    for round_no in (1, 2, 3):
        train, _ = train_and_answer(core, announce(round_no))
        keys.append(train.key)
    assert [k[1] for k in keys] == [1, 2, 3]
    assert len({k[2] for k in keys}) == 3


def test_new_run_with_a_lower_round_number_is_trained() -> None:
    core = agent()
    train_and_answer(core, announce(5, run="old-run"))
    train = only(core.handle(ModelArrived(announce(1, run="new-run"))), Train)
    assert train.key[:2] == ("new-run", 1)


# --- refusing models --------------------------------------------------------------------------


def _repacked(**changes: Any) -> bytes:
    doc = msgpack.unpackb(announce(1), raw=False)
    doc.update(changes)
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


BAD_MODELS: dict[str, tuple[bytes, RejectReason]] = {
    "another_job": (announce(1, job="other-job"), RejectReason.WRONG_JOB),
    "garbage": (b"\x93not a model", RejectReason.MALFORMED),
    "empty": (b"", RejectReason.MALFORMED),
    "truncated": (announce(1)[:-7], RejectReason.MALFORMED),
    "other_version": (_repacked(v=99), RejectReason.BAD_VERSION),
    "not_a_model": (_repacked(type="update"), RejectReason.MALFORMED),
    "nan_weights": (
        announce(1, weights={"w": np.full((4, 2), np.nan, np.float32)}),
        RejectReason.NON_FINITE,
    ),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_model_is_rejected_with_a_reason_and_the_state_is_unchanged(case: str) -> None:
    payload, reason = BAD_MODELS[case]
    core = agent()
    _, first = train_and_answer(core, announce(1))
    latest = core.latest_model

    actions = core.handle(ModelArrived(payload))

    rejected = only(actions, ModelRejected)
    assert actions == [rejected]
    assert rejected.reason is reason
    assert rejected.detail
    assert core.models_rejected == 1
    assert core.latest_model is latest and not core.busy
    # still answering round 1 exactly as before: a retry re-sends the same bytes
    retry = core.handle(ModelArrived(announce(1, attempt=1)))
    assert only(retry, Publish) == only(first, Publish)


def test_model_for_another_cohort_is_not_trained() -> None:
    core = agent()
    (kept,) = core.handle(ModelArrived(announce(1, cohort=("a0", "a2"))))
    assert isinstance(kept, KeepModel) and kept.held.round == 1  # held, for the next delta
    assert not core.busy
    assert core.latest_model is not None and core.latest_model.round == 1

    train = only(core.handle(ModelArrived(announce(2, cohort=("a0", AGENT)))), Train)
    assert train.key[1] == 2


# --- the end of a run ---------------------------------------------------------------------------


def test_final_model_finishes_the_run_without_training() -> None:
    core = agent()
    train_and_answer(core, announce(1))
    final = announce(1, done=True, weights=shifted(W0, 9), issued_at=2000.0)

    actions = core.handle(ModelArrived(final))

    finished = only(actions, RunFinished)
    assert actions == [finished]
    assert finished.model.done and weights_equal(finished.model.weights, shifted(W0, 9))
    assert core.latest_model == finished.model
    assert not core.busy


def test_retained_final_model_of_a_run_never_joined_does_not_end_the_agent() -> None:
    # A newcomer on a broker that still retains an earlier run's final model keeps that
    # model for local use and waits for the next run instead of exiting.
    core = agent()
    (kept,) = core.handle(ModelArrived(announce(5, done=True, run="old-run")))
    assert isinstance(kept, KeepModel) and kept.held.run == "old-run" and kept.held.done
    assert core.latest_model is not None and core.latest_model.run == "old-run"

    train = only(core.handle(ModelArrived(announce(1, run="new-run"))), Train)
    assert train.key[0] == "new-run"


def test_final_model_of_an_earlier_round_still_finishes_a_failed_run() -> None:
    # a run that fails in round 3 publishes the model of round 2, the last completed
    core = agent()
    only(core.handle(ModelArrived(announce(3))), Train)

    actions = core.handle(ModelArrived(announce(2, done=True, issued_at=2000.0)))

    assert only(actions, RunFinished).model.round == 2
    assert core.latest_model is not None and core.latest_model.done


@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_training_that_ends_after_the_final_model_publishes_nothing(outcome: str) -> None:
    # A run stopped in round 1 publishes its initial weights as final: the same key as round 1.
    core = agent()
    train = only(core.handle(ModelArrived(announce(1))), Train)
    assert only(core.handle(ModelArrived(announce(1, done=True, issued_at=2000.0))), RunFinished)
    assert core.latest_model is not None and train.key == (RUN, 1, core.latest_model.model_id)

    if outcome == "done":
        result = trainer().train(train.model.weights, train.model.plan, 1)
        actions = core.handle(TrainingDone(train.key, result, 1.0))
    else:
        actions = core.handle(TrainingFailed(train.key, "interrupted"))

    assert actions == []
    assert not core.busy


# --- rounds overtaking each other -------------------------------------------------------------


def test_newer_round_during_training_discards_the_stale_result_and_trains_the_newer() -> None:
    core = agent()
    old = only(core.handle(ModelArrived(announce(1))), Train)
    (kept,) = core.handle(ModelArrived(announce(2)))  # busy: picked up afterwards
    assert isinstance(kept, KeepModel) and kept.held.round == 2
    stale = trainer().train(old.model.weights, old.model.plan, 1)

    after_old = core.handle(TrainingDone(old.key, stale, 1.0))

    new = only(after_old, Train)
    assert after_old == [new]  # nothing published for round 1
    assert new.key[1] == 2 and new.model.round == 2
    result = trainer().train(new.model.weights, new.model.plan, 2)
    _, update = sent_update(core.handle(TrainingDone(new.key, result, 1.0)))
    assert (update.round, update.model_id) == (2, new.key[2])


def test_failed_training_of_a_stale_round_trains_the_newer_one() -> None:
    core = agent()
    old = only(core.handle(ModelArrived(announce(1))), Train)
    core.handle(ModelArrived(announce(2)))
    assert only(core.handle(TrainingFailed(old.key, "oom")), Train).key[1] == 2


def test_older_round_delivered_after_a_newer_one_is_ignored() -> None:
    core = agent()
    train_and_answer(core, announce(2))

    assert core.handle(ModelArrived(announce(1))) == []

    assert core.latest_model is not None and core.latest_model.round == 2
    assert not core.busy


# --- declining ------------------------------------------------------------------------------


def test_training_failure_sends_a_decline() -> None:
    core = agent()
    train = only(core.handle(ModelArrived(announce(1))), Train)

    actions = core.handle(TrainingFailed(train.key, "training failed: MemoryError"))

    publish, update = sent_update(actions)
    assert update.declined == "training failed: MemoryError"
    assert (update.round, update.model_id, update.samples, update.tensors) == (
        1,
        train.key[2],
        0,
        (),
    )
    assert not only(actions, UpdateSent).resent
    retry = core.handle(ModelArrived(announce(1, attempt=1)))
    assert only(retry, Publish) == publish  # a retry re-sends the decline, no retraining


def test_decline_reason_is_never_empty_and_bounded() -> None:
    core = agent()
    train = only(core.handle(ModelArrived(announce(1))), Train)
    _, empty = sent_update(core.handle(TrainingFailed(train.key, "")))
    assert empty.declined == "declined"
    core2 = agent()
    train2 = only(core2.handle(ModelArrived(announce(1))), Train)
    _, long = sent_update(core2.handle(TrainingFailed(train2.key, "x" * 1000)))
    assert long.declined == "x" * 256


def test_training_result_for_an_unknown_key_does_not_publish() -> None:
    core = agent()
    only(core.handle(ModelArrived(announce(1))), Train)
    result = TrainResult(copy_weights(W0), 20, {})
    actions = core.handle(TrainingDone(("other-run", 1, "f" * 32), result, 0.1))
    assert not any(isinstance(a, Publish) for a in actions)


# --- presence -------------------------------------------------------------------------------


def test_connected_publishes_online_presence_retained() -> None:
    publish = only(agent().handle(Connected(), wall=1_700_000_123.5), Publish)

    assert publish.retain
    ref = parse_topic(publish.topic)
    assert (ref.job, ref.kind, ref.agent) == (JOB, TopicKind.AGENTS, AGENT)
    presence = decode_presence(publish.payload)
    assert (presence.agent, presence.online, presence.samples) == (AGENT, True, 20)
    assert (presence.trainer, presence.device, presence.at) == (
        "numpy-linreg",
        "rpi4",
        1_700_000_123.5,
    )


def test_shutdown_publishes_offline_presence_retained() -> None:
    publish = only(agent().handle(ShutdownRequested(), wall=42.0), Publish)

    assert publish.retain and parse_topic(publish.topic).kind is TopicKind.AGENTS
    presence = decode_presence(publish.payload)
    assert (presence.agent, presence.online, presence.at) == (AGENT, False, 42.0)


def test_last_will_is_offline_presence_retained_on_the_agents_topic() -> None:
    core = agent()
    will = core.will()

    assert will.retain
    assert will.topic == core.topics.presence(AGENT)
    presence = decode_presence(will.payload)
    assert (presence.agent, presence.online, presence.samples) == (AGENT, False, 20)


def test_agent_ids_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="invalid agent"):
        AgentCore(JOB, "bad/agent", samples=1, trainer="x")
    with pytest.raises(ValueError, match="invalid job"):
        AgentCore("job+", AGENT, samples=1, trainer="x")


def test_a_hashed_cohort_is_trained_iff_the_agent_passes() -> None:
    """docs/PROTOCOL.md §17: both where the agent takes a model and where it picks the newest
    model once a training ends, the hash decides."""
    rule = CohortHash(1 << 62)  # a fraction 0.25

    def hashed(round_no: int) -> bytes:
        m = dataclasses.replace(decode_model(announce(round_no)), cohort_hash=rule)
        return encode_model(m)

    rounds = range(1, 17)
    passes = [r for r in rounds if in_cohort(rule, JOB, RUN, r, AGENT)]
    assert 0 < len(passes) < len(rounds)
    trains = [r for r in rounds
              if any(isinstance(a, Train) for a in agent().handle(ModelArrived(hashed(r))))]
    assert trains == passes
    seen = set()
    for first in passes:
        core = agent()
        train = only(core.handle(ModelArrived(hashed(first))), Train)
        core.handle(ModelArrived(hashed(first + 1)))  # arrives while training
        result = trainer().train(train.model.weights, train.model.plan, train.model.round)
        after = core.handle(TrainingDone(train.key, result, 0.5))
        next_trains = any(isinstance(a, Train) for a in after)
        assert next_trains == (first + 1 in passes), first + 1
        seen.add(next_trains)
    assert seen == {True, False}
