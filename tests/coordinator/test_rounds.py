"""The round machine, driven by hand and through the Fleet: pure, fake clock, fixed seeds."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import (
    Action,
    BrokerConnected,
    Evaluate,
    Evaluated,
    MessageRejected,
    PresenceArrived,
    RoundClosed,
    RoundConfig,
    RoundOpened,
    Rounds,
    SaveCheckpoint,
    Stop,
    StopRequested,
    Tick,
    UpdateAccepted,
    UpdateArrived,
)
from edge_agent.agent import RunFinished
from protocol import (
    ClosedBy,
    ModelAnnouncement,
    Phase,
    Presence,
    Publish,
    RejectReason,
    RoundMetrics,
    Status,
    TopicKind,
    Update,
    Weights,
    decode_metrics,
    decode_model,
    decode_status,
    encode_delta,
    encode_presence,
    encode_update,
    parse_topic,
    weights_digest,
)
from protocol.tensors import encode_array
from tests.helpers import (
    Fleet,
    LinearTrainer,
    assert_weights_close,
    copy_weights,
    expected_fedavg,
    initial_weights,
    weights_equal,
)

JOB, TASK, RUN = "job1", "linreg", "run1"
AGENTS = ("a0", "a1", "a2")
W0 = initial_weights()
SHAPES = {name: arr.shape for name, arr in W0.items()}


# --- building blocks --------------------------------------------------------------------


def make_config(**overrides: Any) -> RoundConfig:
    settings_: dict[str, Any] = {
        "job": JOB,
        "task": TASK,
        "rounds": 3,
        "deadline_s": 10.0,
        "evaluate": False,
        "max_update_bytes": 4096,
        "min_agents": 3,  # start() brings AGENTS online one by one
    }
    settings_.update(overrides)
    return RoundConfig(**settings_)


def presence(agent: str, *, online: bool = True, samples: int = 10) -> bytes:
    return encode_presence(Presence(agent=agent, online=online, samples=samples, trainer="numpy"))


def make_delta(seed: int, scale: float = 0.1) -> Weights:
    rng = np.random.default_rng([seed, 7])
    return {n: rng.normal(0.0, scale, size=s).astype(np.float32) for n, s in SHAPES.items()}


def update_bytes(
    agent: str,
    round_no: int,
    model_id: str,
    delta: Weights | None = None,
    samples: int | None = None,
    *,
    job: str = JOB,
    codec: str = "none",
    metrics: dict[str, float] | None = None,
    declined: str | None = None,
    tensors: Sequence[dict[str, Any]] | None = None,
) -> bytes:
    if tensors is None:
        tensors = [] if declined is not None else encode_delta(delta or make_delta(0), codec)
    update = Update(
        job=job,
        agent=agent,
        round=round_no,
        model_id=model_id,
        samples=samples if samples is not None else (0 if declined is not None else 10),
        codec=codec,
        tensors=tuple(tensors),
        metrics=metrics if metrics is not None else {"loss": 1.0},
        declined=declined,
    )
    return encode_update(update)


def model_id_of(rounds: Rounds) -> str:
    """The id of the model the open round was announced with (the current global model)."""
    return weights_digest(rounds.weights)


def start(
    config: RoundConfig | None = None, agents: Sequence[str] = AGENTS, now: float = 0.0
) -> tuple[Rounds, list[Action]]:
    rounds = Rounds(config or make_config(), copy_weights(W0), run=RUN)
    actions: list[Action] = []
    for agent in agents:
        actions += rounds.handle(PresenceArrived(agent, presence(agent)), now)
    return rounds, actions


def reply(
    rounds: Rounds, agent: str, delta: Weights, samples: int, now: float, **kw: Any
) -> list[Action]:
    round_no = kw.pop("round_no", None) or current_round(rounds)
    payload = update_bytes(agent, round_no, model_id_of(rounds), delta, samples, **kw)
    return rounds.handle(UpdateArrived(agent, payload), now)


def current_round(rounds: Rounds) -> int:
    return rounds.completed_rounds + 1


def oracle(weights: Weights, deltas: Sequence[Weights], counts: Sequence[float]) -> Weights:
    """FedAvg by ``np.average``: the independent check of the streaming aggregator."""
    return {
        name: (w + np.average(np.stack([d[name] for d in deltas]), axis=0, weights=counts)).astype(
            np.float32
        )
        for name, w in weights.items()
    }


def of_type(actions: Sequence[Action], kind: type[Any]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def only(actions: Sequence[Action], kind: type[Any]) -> Any:
    found = of_type(actions, kind)
    assert len(found) == 1, f"expected one {kind.__name__} in {actions}"
    return found[0]


def publishes(actions: Sequence[Action], kind: TopicKind) -> list[Publish]:
    return [a for a in of_type(actions, Publish) if parse_topic(a.topic).kind is kind]


def models(actions: Sequence[Action]) -> list[ModelAnnouncement]:
    return [decode_model(p.payload) for p in publishes(actions, TopicKind.MODEL)]


def statuses(actions: Sequence[Action]) -> list[Status]:
    return [decode_status(p.payload) for p in publishes(actions, TopicKind.STATUS)]


def closed(actions: Sequence[Action]) -> RoundMetrics:
    return only(actions, RoundClosed).metrics  # type: ignore[no-any-return]


# --- "after a rejection, nothing has changed" ----------------------------------------------


@dataclass(frozen=True)
class Observation:
    """What a round machine shows from outside, plus what its round would produce now."""

    phase: Phase
    completed: int
    round: int
    attempt: int
    accepted: int
    deadline: float | None
    weights: Weights
    pending: Weights | None


def observe(rounds: Rounds, now: float) -> Observation:
    """Probe copies of the machine: a status snapshot, and the model a close would produce."""
    status = statuses(copy.deepcopy(rounds).handle(BrokerConnected(), now))[-1]
    probe = copy.deepcopy(rounds)
    deadline = probe.next_deadline()
    pending: Weights | None = None
    if deadline is not None:
        acts = probe.handle(Tick(), max(now, deadline))
        evaluations = of_type(acts, Evaluate)
        if evaluations:
            pending = copy_weights(evaluations[0].weights)
        elif probe.completed_rounds > rounds.completed_rounds:
            pending = copy_weights(probe.weights)
    return Observation(
        phase=rounds.phase,
        completed=rounds.completed_rounds,
        round=status.round,
        attempt=status.attempt,
        accepted=status.accepted,
        deadline=rounds.next_deadline(),
        weights=copy_weights(rounds.weights),
        pending=pending,
    )


def assert_unchanged(before: Observation, after: Observation) -> None:
    assert (before.phase, before.completed, before.round, before.attempt, before.accepted) == (
        after.phase,
        after.completed,
        after.round,
        after.attempt,
        after.accepted,
    )
    assert before.deadline == after.deadline
    assert weights_equal(before.weights, after.weights)
    if before.pending is None:
        assert after.pending is None
    else:
        assert after.pending is not None and weights_equal(before.pending, after.pending)


# --- presence and the first round -------------------------------------------------------------


def test_round_one_opens_only_when_min_agents_are_online() -> None:
    rounds, actions = start(make_config(min_agents=3), agents=("a0", "a1"))
    assert rounds.phase is Phase.WAITING
    assert models(actions) == []
    assert rounds.next_deadline() is None

    opened = rounds.handle(PresenceArrived("a2", presence("a2")), 5.0)

    assert rounds.phase is Phase.TRAINING
    assert only(opened, RoundOpened) == RoundOpened(1, 0, 3, 3, 10.0)
    (model,) = models(opened)
    assert (model.round, model.attempt, model.run, model.job, model.task) == (1, 0, RUN, JOB, TASK)
    assert model.model_id == weights_digest(W0)
    assert weights_equal(model.weights, W0)
    assert model.deadline_s == 10.0 and not model.done
    assert publishes(opened, TopicKind.MODEL)[0].retain
    assert rounds.next_deadline() == 15.0


def test_offline_presence_does_not_count_towards_min_agents() -> None:
    rounds, _ = start(make_config(min_agents=2), agents=("a0",))
    rounds.handle(PresenceArrived("a1", presence("a1", online=False)), 0.0)
    assert rounds.phase is Phase.WAITING
    assert rounds.agents_online == {"a0"}

    rounds.handle(PresenceArrived("a1", presence("a1")), 1.0)
    assert rounds.phase is Phase.TRAINING


def test_empty_presence_payload_clears_the_agent() -> None:
    rounds, _ = start(make_config(min_agents=2), agents=("a0",))
    actions = rounds.handle(PresenceArrived("a0", b""), 0.0)

    assert rounds.agents_online == frozenset()
    assert statuses(actions)[-1].agents_online == 0
    rounds.handle(PresenceArrived("a1", presence("a1")), 0.0)
    assert rounds.phase is Phase.WAITING  # a0 no longer counts


def test_presence_naming_another_agent_is_rejected_and_ignored() -> None:
    rounds, _ = start(make_config(min_agents=1), agents=())
    actions = rounds.handle(PresenceArrived("a0", presence("a1")), 0.0)

    reject = only(actions, MessageRejected)
    assert reject.reason is RejectReason.AGENT_MISMATCH and reject.agent == "a0"
    assert rounds.agents_online == frozenset()
    assert rounds.phase is Phase.WAITING
    assert rounds.rejected_total == {"agent_mismatch": 1}


def test_garbage_presence_is_rejected_as_malformed() -> None:
    rounds, _ = start(make_config(min_agents=1), agents=())
    reject = only(rounds.handle(PresenceArrived("a0", b"{not json"), 0.0), MessageRejected)
    assert reject.reason is RejectReason.MALFORMED
    assert rounds.phase is Phase.WAITING


@pytest.mark.parametrize("level", ["bad id", "-x", "", "a" * 65, "a/b"])
@pytest.mark.parametrize("kind", ["update", "presence"])
def test_a_topic_level_that_is_no_agent_id_is_rejected_as_malformed_and_counted(
    level: str, kind: str
) -> None:
    rounds, _ = start()
    before = observe(rounds, 1.0)
    event = (UpdateArrived(level, update_bytes("a0", 1, model_id_of(rounds), make_delta(0), 10))
             if kind == "update" else PresenceArrived(level, presence("a0")))

    (rejected,) = rounds.handle(event, 1.0)

    assert isinstance(rejected, MessageRejected) and rejected.reason is RejectReason.MALFORMED
    assert rounds.rejected_total == {"malformed": 1}
    assert_unchanged(before, observe(rounds, 1.0))


def test_late_joiner_may_reply_and_is_accepted() -> None:
    rounds, actions = start(make_config(min_agents=2, quorum=3), agents=("a0", "a1"))
    assert only(actions, RoundOpened).cohort_size == 2
    rounds.handle(PresenceArrived("a2", presence("a2")), 1.0)

    accepted = reply(rounds, "a2", make_delta(2), 30, now=2.0)

    assert only(accepted, UpdateAccepted) == UpdateAccepted("a2", 1, 1, 3)


# --- closing a round: quorum, everyone, deadline ----------------------------------------------


def test_quorum_closes_round_before_the_deadline_with_fedavg_of_accepted_updates() -> None:
    rounds, _ = start(make_config(quorum=2))
    d0, d1 = make_delta(0), make_delta(1)

    first = reply(rounds, "a0", d0, 10, now=1.0)
    assert only(first, UpdateAccepted) == UpdateAccepted("a0", 1, 1, 2)
    assert of_type(first, RoundClosed) == []
    assert statuses(first)[-1].accepted == 1

    second = reply(rounds, "a1", d1, 30, now=2.5)

    metrics = closed(second)
    assert metrics.closed_by is ClosedBy.QUORUM
    assert (metrics.round, metrics.accepted, metrics.samples, metrics.duration_s) == (1, 2, 40, 2.5)
    assert rounds.completed_rounds == 1
    assert_weights_close(rounds.weights, oracle(W0, [d0, d1], [10, 30]))
    assert decode_metrics(publishes(second, TopicKind.METRICS)[0].payload) == metrics


def test_quorum_none_means_every_agent_online_at_round_start() -> None:
    rounds, actions = start(make_config(quorum=None))
    assert only(actions, RoundOpened).quorum == 3
    reply(rounds, "a0", make_delta(0), 10, now=1.0)
    assert of_type(reply(rounds, "a1", make_delta(1), 10, now=1.0), RoundClosed) == []

    last = reply(rounds, "a2", make_delta(2), 10, now=1.0)

    # every agent asked was accepted: that is the quorum, so the machine says QUORUM
    assert closed(last).closed_by is ClosedBy.QUORUM


def test_decline_counts_as_answered_and_closes_all_replied_without_waiting() -> None:
    rounds, _ = start(make_config(quorum=None, min_replies=2))
    d0, d1 = make_delta(0), make_delta(1)
    reply(rounds, "a0", d0, 10, now=1.0)
    decline = update_bytes("a2", 1, model_id_of(rounds), declined="battery low")
    after_decline = rounds.handle(UpdateArrived("a2", decline), 2.0)
    assert of_type(after_decline, RoundClosed) == []
    assert of_type(after_decline, MessageRejected) == []

    last = reply(rounds, "a1", d1, 20, now=3.0)

    metrics = closed(last)
    assert metrics.closed_by is ClosedBy.ALL_REPLIED
    assert (metrics.accepted, metrics.declined, metrics.duration_s) == (2, 1, 3.0)
    assert_weights_close(rounds.weights, oracle(W0, [d0, d1], [10, 20]))


def test_declines_alone_do_not_close_a_round_below_min_replies() -> None:
    rounds, _ = start(make_config(quorum=None, min_replies=2))
    reply(rounds, "a0", make_delta(0), 10, now=1.0)
    for agent in ("a1", "a2"):
        payload = update_bytes(agent, 1, model_id_of(rounds), declined="no data")
        assert of_type(rounds.handle(UpdateArrived(agent, payload), 1.0), RoundClosed) == []
    assert rounds.phase is Phase.TRAINING


def test_deadline_closes_with_min_replies_exactly_when_tick_reaches_the_deadline() -> None:
    rounds, _ = start(make_config(quorum=3, min_replies=2), now=100.0)
    d0, d1 = make_delta(0), make_delta(1)
    reply(rounds, "a0", d0, 10, now=101.0)
    reply(rounds, "a1", d1, 20, now=102.0)
    assert rounds.next_deadline() == 110.0

    assert rounds.handle(Tick(), 109.999) == []
    assert rounds.phase is Phase.TRAINING and rounds.completed_rounds == 0

    actions = rounds.handle(Tick(), 110.0)

    metrics = closed(actions)
    assert metrics.closed_by is ClosedBy.DEADLINE
    assert (metrics.accepted, metrics.duration_s) == (2, 10.0)
    assert_weights_close(rounds.weights, oracle(W0, [d0, d1], [10, 20]))
    assert only(actions, RoundOpened).round_no == 2
    assert rounds.next_deadline() == 120.0


def test_next_deadline_follows_the_phase() -> None:
    rounds, _ = start(make_config(min_agents=3, evaluate=True), agents=("a0", "a1"))
    assert rounds.next_deadline() is None  # waiting
    rounds.handle(PresenceArrived("a2", presence("a2")), 3.0)
    assert rounds.next_deadline() == 13.0
    for agent in AGENTS:
        reply(rounds, agent, make_delta(0), 10, now=4.0)
    assert rounds.phase is Phase.EVALUATING
    assert rounds.next_deadline() is None
    rounds.handle(Evaluated(1, {"accuracy": 0.1}), 6.0)
    assert rounds.next_deadline() == 16.0  # round 2 opened at 6
    rounds.handle(StopRequested("test"), 7.0)
    assert rounds.next_deadline() is None


# --- short rounds: retry or stop -----------------------------------------------------------------


def test_short_round_retry_reannounces_same_round_with_backoff_and_keeps_accepted() -> None:
    cfg = make_config(quorum=3, min_replies=2, retry_backoff=1.5, max_retries=3)
    rounds, opened = start(cfg)
    (first,) = models(opened)
    d0, d1 = make_delta(0), make_delta(1)
    reply(rounds, "a0", d0, 10, now=1.0)

    retry = rounds.handle(Tick(), 10.0)

    (again,) = models(retry)
    assert (again.round, again.attempt, again.model_id) == (1, 1, first.model_id)
    assert again.deadline_s == 15.0  # 10 * 1.5 ** 1
    assert weights_equal(again.weights, first.weights)
    assert publishes(retry, TopicKind.MODEL)[0].retain
    assert only(retry, RoundOpened) == RoundOpened(1, 1, 3, 3, 15.0)
    assert rounds.next_deadline() == 25.0
    assert rounds.phase is Phase.TRAINING and rounds.completed_rounds == 0
    assert statuses(retry)[-1].accepted == 1  # a0's update survived the retry
    resent = rounds.handle(UpdateArrived("a0", update_bytes("a0", 1, first.model_id, d0, 10)), 11)
    assert only(resent, MessageRejected).reason is RejectReason.DUPLICATE

    reply(rounds, "a1", d1, 20, now=12.0)
    second_retry = rounds.handle(Tick(), 25.0)

    metrics = closed(second_retry)
    assert metrics.closed_by is ClosedBy.DEADLINE and metrics.accepted == 2
    assert_weights_close(rounds.weights, oracle(W0, [d0, d1], [10, 20]))


def test_retry_deadlines_grow_by_backoff_per_attempt() -> None:
    rounds, _ = start(make_config(quorum=3, min_replies=1, retry_backoff=2.0, max_retries=3))
    deadlines_s = []
    for _ in range(3):
        deadline = rounds.next_deadline()
        assert deadline is not None
        deadlines_s.append(only(rounds.handle(Tick(), deadline), RoundOpened).deadline_s)
    assert deadlines_s == [20.0, 40.0, 80.0]


def test_short_round_fails_after_max_retries_with_a_clear_message() -> None:
    rounds, _ = start(make_config(quorum=3, min_replies=2, max_retries=2, retry_backoff=2.0))
    reply(rounds, "a0", make_delta(0), 10, now=1.0)
    assert only(rounds.handle(Tick(), 10.0), RoundOpened).attempt == 1
    assert only(rounds.handle(Tick(), 30.0), RoundOpened).attempt == 2

    final = rounds.handle(Tick(), 70.0)

    stop = only(final, Stop)
    assert stop.phase is Phase.FAILED
    assert stop.message == (
        "round 1: 1 of min_replies=2 updates by the deadline after 2 retries; stopping"
    )
    assert rounds.phase is Phase.FAILED and rounds.finished
    assert rounds.message == stop.message
    (last_model,) = models(final)
    assert last_model.done and weights_equal(last_model.weights, W0)
    assert statuses(final)[-1].phase is Phase.FAILED
    assert statuses(final)[-1].message == stop.message
    assert of_type(final, RoundClosed) == [] and rounds.completed_rounds == 0
    assert rounds.next_deadline() is None


def test_short_round_policy_stop_fails_at_the_first_deadline() -> None:
    rounds, _ = start(make_config(quorum=3, min_replies=1, on_short_round="stop"))

    final = rounds.handle(Tick(), 10.0)

    stop = only(final, Stop)
    assert stop.phase is Phase.FAILED
    assert "0 of min_replies=1" in stop.message and "retries" not in stop.message
    assert of_type(final, RoundOpened) == []
    assert models(final)[0].done


# --- duplicates and rejections ---------------------------------------------------------------


def test_duplicate_update_bytes_are_counted_once() -> None:
    rounds, _ = start(make_config(quorum=3))
    d0 = make_delta(0)
    payload = update_bytes("a0", 1, model_id_of(rounds), d0, 10)
    rounds.handle(UpdateArrived("a0", payload), 1.0)
    before = observe(rounds, 1.0)

    again = rounds.handle(UpdateArrived("a0", payload), 2.0)

    reject = only(again, MessageRejected)
    assert (reject.reason, reject.agent, reject.round_no) == (RejectReason.DUPLICATE, "a0", 1)
    assert_unchanged(before, observe(rounds, 2.0))
    assert before.pending is not None
    assert_weights_close(before.pending, oracle(W0, [d0], [10]))


@dataclass(frozen=True)
class Ctx:
    """Round 2 is open; ``previous_model_id`` is the model round 1 trained from."""

    model_id: str
    previous_model_id: str


def _entries(delta: Weights, dtype: str = "<f4") -> list[dict[str, Any]]:
    return [{"name": n, **encode_array(a.astype(dtype))} for n, a in delta.items()]


def _repack(payload: bytes, **changes: Any) -> bytes:
    doc = msgpack.unpackb(payload, raw=False)
    doc.update(changes)
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def _with(delta: Weights, name: str, value: float) -> Weights:
    bad = copy_weights(delta)
    bad[name].flat[0] = value
    return bad


D = make_delta(11)
Case = Callable[[Ctx], tuple[str, bytes]]
REJECTIONS: dict[str, tuple[RejectReason, Case]] = {
    "stale_round": (
        RejectReason.STALE,
        lambda c: ("a1", update_bytes("a1", 1, c.previous_model_id, D)),
    ),
    "future_round": (
        RejectReason.FUTURE_ROUND,
        lambda c: ("a1", update_bytes("a1", 3, c.model_id, D)),
    ),
    "base_mismatch": (
        RejectReason.BASE_MISMATCH,
        lambda c: ("a1", update_bytes("a1", 2, c.previous_model_id, D)),
    ),
    "unknown_agent": (
        RejectReason.UNKNOWN_AGENT,
        lambda c: ("stranger", update_bytes("stranger", 2, c.model_id, D)),
    ),
    "agent_mismatch": (
        RejectReason.AGENT_MISMATCH,
        lambda c: ("a1", update_bytes("a2", 2, c.model_id, D)),
    ),
    "wrong_job": (
        RejectReason.WRONG_JOB,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, D, job="other-job")),
    ),
    "tensor_wrong_names": (
        RejectReason.TENSOR_MISMATCH,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, {"w": D["w"], "c": D["b"]})),
    ),
    "tensor_wrong_shape": (
        RejectReason.TENSOR_MISMATCH,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, {"w": D["w"][:-1], "b": D["b"]})),
    ),
    "tensor_missing": (
        RejectReason.TENSOR_MISMATCH,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, {"w": D["w"]})),
    ),
    "tensor_extra": (
        RejectReason.TENSOR_MISMATCH,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, {**D, "extra": D["b"]})),
    ),
    "tensor_order_swapped": (
        RejectReason.TENSOR_MISMATCH,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, {"b": D["b"], "w": D["w"]})),
    ),
    "dtype_not_the_codecs": (
        RejectReason.BAD_CODEC,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, tensors=_entries(D, "<f2"))),
    ),
    "codec_not_the_rounds": (
        RejectReason.BAD_CODEC,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, D, codec="fp16")),
    ),
    "unknown_codec": (
        RejectReason.BAD_CODEC,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, codec="zstd", tensors=_entries(D))),
    ),
    "nan_in_tensor": (
        RejectReason.NON_FINITE,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, _with(D, "w", float("nan")))),
    ),
    "inf_in_tensor": (
        RejectReason.NON_FINITE,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, _with(D, "b", float("-inf")))),
    ),
    "nan_in_metrics": (
        RejectReason.NON_FINITE,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, D, metrics={"loss": float("nan")})),
    ),
    "oversize_payload": (
        RejectReason.TOO_LARGE,
        lambda c: ("a1", _repack(update_bytes("a1", 2, c.model_id, D), pad=b"x" * 5000)),
    ),
    "garbage_bytes": (RejectReason.MALFORMED, lambda c: ("a1", b"\xc1\x00garbage")),
    "empty_payload": (RejectReason.MALFORMED, lambda c: ("a1", b"")),
    "zero_samples": (
        RejectReason.MALFORMED,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, D, samples=0)),
    ),
    "more_samples_than_max_samples": (  # a forged FedAvg weight that would swamp the rest
        RejectReason.TOO_LARGE,
        lambda c: ("a1", update_bytes("a1", 2, c.model_id, D, samples=1_000_001)),
    ),
    "wrong_schema_version": (
        RejectReason.BAD_VERSION,
        lambda c: ("a1", _repack(update_bytes("a1", 2, c.model_id, D), v=2)),
    ),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejected_update_leaves_round_and_aggregate_unchanged(case: str) -> None:
    reason, build = REJECTIONS[case]
    rounds, _ = start(make_config(quorum=3, min_replies=1))
    previous_model_id = model_id_of(rounds)
    for k, agent in enumerate(AGENTS):
        reply(rounds, agent, make_delta(100 + k), 10, now=1.0)
    w1 = copy_weights(rounds.weights)
    ctx = Ctx(model_id=model_id_of(rounds), previous_model_id=previous_model_id)
    d0 = make_delta(0)
    reply(rounds, "a0", d0, 10, now=2.0)
    before = observe(rounds, 3.0)
    topic_agent, payload = build(ctx)

    actions = rounds.handle(UpdateArrived(topic_agent, payload), 3.0)

    reject = only(actions, MessageRejected)
    assert actions == [reject]
    assert (reject.reason, reject.agent, reject.round_no) == (reason, topic_agent, 2)
    assert reject.detail
    assert_unchanged(before, observe(rounds, 3.0))
    assert rounds.rejected_total == {reason.value: 1}
    # the round goes on as if the bad message had never come: a1 may still answer
    d1, d2 = make_delta(1), make_delta(2)
    reply(rounds, "a1", d1, 20, now=4.0)
    metrics = closed(reply(rounds, "a2", d2, 30, now=5.0))
    assert metrics.rejected == {reason.value: 1}
    assert metrics.accepted == 3
    assert_weights_close(rounds.weights, oracle(w1, [d0, d1, d2], [10, 20, 30]))


def test_agent_not_in_allowed_agents_is_rejected_as_unknown_even_when_online() -> None:
    cfg = make_config(quorum=2, min_agents=2, allowed_agents=frozenset({"a0", "a1"}))
    rounds, opened = start(cfg)
    assert only(opened, RoundOpened).cohort_size == 2  # a2 is online but not provisioned
    reply(rounds, "a0", make_delta(0), 10, now=1.0)
    before = observe(rounds, 1.0)

    reject = only(reply(rounds, "a2", make_delta(2), 10, now=1.0), MessageRejected)

    assert reject.reason is RejectReason.UNKNOWN_AGENT
    assert_unchanged(before, observe(rounds, 1.0))


def test_min_agents_counts_only_allowed_agents() -> None:
    cfg = make_config(min_agents=2, allowed_agents=frozenset({"a0", "a1"}))
    rounds, _ = start(cfg, agents=("a0", "a2"))
    assert rounds.phase is Phase.WAITING
    rounds.handle(PresenceArrived("a1", presence("a1")), 0.0)
    assert rounds.phase is Phase.TRAINING


def test_update_while_waiting_is_rejected_no_round() -> None:
    rounds, _ = start(make_config(min_agents=3), agents=("a0",))
    payload = update_bytes("a0", 1, weights_digest(W0), make_delta(0))

    reject = only(rounds.handle(UpdateArrived("a0", payload), 0.0), MessageRejected)

    assert (reject.reason, reject.round_no) == (RejectReason.NO_ROUND, None)
    assert rounds.phase is Phase.WAITING
    assert rounds.rejected_total == {"no_round": 1}


def test_update_for_the_closed_round_during_evaluation_is_stale() -> None:
    rounds, _ = start(make_config(quorum=2, evaluate=True))
    model_id = model_id_of(rounds)
    reply(rounds, "a0", make_delta(0), 10, now=1.0)
    reply(rounds, "a1", make_delta(1), 10, now=1.0)
    assert rounds.phase is Phase.EVALUATING

    late = update_bytes("a2", 1, model_id, make_delta(2))
    reject = only(rounds.handle(UpdateArrived("a2", late), 2.0), MessageRejected)

    assert reject.reason is RejectReason.STALE
    assert rounds.phase is Phase.EVALUATING
    metrics = closed(rounds.handle(Evaluated(1, {"accuracy": 0.5}), 3.0))
    assert metrics.accepted == 2
    assert rounds.rejected_total == {"stale": 1}


def test_update_after_the_run_is_over_is_refused() -> None:
    rounds, _ = start(make_config(rounds=1, quorum=1))
    model_id = model_id_of(rounds)
    reply(rounds, "a0", make_delta(0), 10, now=1.0)
    assert rounds.phase is Phase.DONE
    final = copy_weights(rounds.weights)

    stale = rounds.handle(UpdateArrived("a1", update_bytes("a1", 1, model_id, D)), 2.0)
    future = rounds.handle(UpdateArrived("a1", update_bytes("a1", 2, model_id, D)), 2.0)

    assert only(stale, MessageRejected).reason is RejectReason.STALE
    assert only(future, MessageRejected).reason is RejectReason.NO_ROUND
    assert weights_equal(rounds.weights, final)


def test_rejections_are_counted_in_totals_status_and_the_rounds_metrics() -> None:
    rounds, _ = start(make_config(quorum=2))
    rounds.handle(UpdateArrived("a0", b"junk"), 1.0)
    rounds.handle(UpdateArrived("a0", b"junk"), 1.0)
    rounds.handle(UpdateArrived("zz", update_bytes("zz", 1, model_id_of(rounds), D)), 1.0)
    status = statuses(reply(rounds, "a0", make_delta(0), 10, now=2.0))[-1]
    assert status.rejected == {"malformed": 2, "unknown_agent": 1}

    metrics = closed(reply(rounds, "a1", make_delta(1), 10, now=3.0))

    assert metrics.rejected == {"malformed": 2, "unknown_agent": 1}
    assert rounds.rejected_total == {"malformed": 2, "unknown_agent": 1}
    rounds.handle(UpdateArrived("a0", b"junk"), 4.0)  # round 2 counts afresh
    metrics2 = closed(
        reply(rounds, "a0", make_delta(0), 10, now=5.0)
        + reply(rounds, "a1", make_delta(1), 10, now=5.0)
    )
    assert metrics2.rejected == {"malformed": 1}
    assert rounds.rejected_total == {"malformed": 3, "unknown_agent": 1}


# --- aggregation through the machine --------------------------------------------------------


def test_mean_aggregator_ignores_sample_counts() -> None:
    rounds, _ = start(make_config(quorum=3, aggregator="mean"))
    deltas = [make_delta(k) for k in range(3)]
    for agent, delta, samples in zip(AGENTS, deltas, (1, 100, 10_000), strict=True):
        reply(rounds, agent, delta, samples, now=1.0)
    assert_weights_close(rounds.weights, oracle(W0, deltas, [1, 1, 1]))


def test_metrics_carry_sample_weighted_train_loss_and_bytes() -> None:
    rounds, _ = start(make_config(quorum=2))
    mid = model_id_of(rounds)
    p0 = update_bytes("a0", 1, mid, make_delta(0), 10, metrics={"loss": 1.0, "accuracy": 0.5})
    p1 = update_bytes("a1", 1, mid, make_delta(1), 30, metrics={"loss": 3.0, "accuracy": 0.9})
    rounds.handle(UpdateArrived("a0", p0), 1.0)

    metrics = closed(rounds.handle(UpdateArrived("a1", p1), 1.0))

    assert metrics.train_loss == pytest.approx((1.0 * 10 + 3.0 * 30) / 40)
    assert metrics.train_accuracy == pytest.approx((0.5 * 10 + 0.9 * 30) / 40)
    assert metrics.bytes_up == len(p0) + len(p1)
    assert metrics.raw_bytes_up == 2 * 4 * sum(a.size for a in W0.values())
    assert metrics.accuracy is None  # evaluate=False


def test_train_metrics_average_only_over_the_updates_that_report_them() -> None:
    rounds, _ = start(make_config(quorum=3))
    mid = model_id_of(rounds)
    rounds.handle(UpdateArrived("a0", update_bytes("a0", 1, mid, make_delta(0), 10,
                                                   metrics={"loss": 2.0})), 1.0)
    rounds.handle(UpdateArrived("a1", update_bytes("a1", 1, mid, make_delta(1), 30,
                                                   metrics={"accuracy": 0.9})), 1.0)
    last = update_bytes("a2", 1, mid, make_delta(2), 60, metrics={})

    metrics = closed(rounds.handle(UpdateArrived("a2", last), 1.0))

    assert metrics.samples == 100
    assert metrics.train_loss == pytest.approx(2.0)  # a1 and a2 reported no loss, not loss 0
    assert metrics.train_accuracy == pytest.approx(0.9)


@settings(max_examples=40, deadline=None)
@given(
    script=st.lists(
        st.tuples(st.sampled_from(["valid", "garbage", "future", "base"]), st.integers(0, 2)),
        max_size=25,
    ),
    samples=st.lists(st.integers(1, 1000), min_size=3, max_size=3),
)
def test_any_mix_of_valid_and_bad_messages_aggregates_each_valid_agent_once(
    script: list[tuple[str, int]], samples: list[int]
) -> None:
    # four agents online so three of them can never close the round before the deadline
    rounds, _ = start(make_config(min_agents=4), agents=("a0", "a1", "a2", "a3"))
    mid = model_id_of(rounds)
    deltas = [make_delta(k) for k in range(3)]
    expected_reasons: dict[str, int] = {}
    first_valid: list[int] = []
    for kind, k in script:
        agent = f"a{k}"
        if kind == "valid":
            payload = update_bytes(agent, 1, mid, deltas[k], samples[k])
            reason = "duplicate" if k in first_valid else None
            if k not in first_valid:
                first_valid.append(k)
        elif kind == "garbage":
            payload, reason = b"\x00\x01", "malformed"
        elif kind == "future":
            payload, reason = update_bytes(agent, 2, mid, deltas[k], samples[k]), "future_round"
        else:  # the duplicate check comes before the base check
            payload = update_bytes(agent, 1, "0" * 32, deltas[k])
            reason = "duplicate" if k in first_valid else "base_mismatch"
        actions = rounds.handle(UpdateArrived(agent, payload), 1.0)
        if reason is None:
            assert of_type(actions, UpdateAccepted)
        else:
            assert only(actions, MessageRejected).reason.value == reason
            expected_reasons[reason] = expected_reasons.get(reason, 0) + 1

    actions = rounds.handle(Tick(), 10.0)

    assert rounds.rejected_total == expected_reasons
    if not first_valid:
        assert only(actions, RoundOpened).attempt == 1  # a retry, nothing aggregated
        assert weights_equal(rounds.weights, W0)
        return
    assert closed(actions).accepted == len(first_valid)
    expected = oracle(W0, [deltas[k] for k in first_valid], [samples[k] for k in first_valid])
    assert_weights_close(rounds.weights, expected)


# --- evaluation, stopping, the end of a run ---------------------------------------------------


def _close_round(rounds: Rounds, now: float) -> list[Action]:
    actions: list[Action] = []
    for k, agent in enumerate(AGENTS):
        actions += reply(rounds, agent, make_delta(k), 10, now=now)
    return actions


def test_run_stops_after_configured_rounds_and_publishes_the_final_model() -> None:
    rounds, _ = start(make_config(rounds=2, quorum=3))
    _close_round(rounds, 1.0)
    assert rounds.phase is Phase.TRAINING and rounds.completed_rounds == 1

    last = _close_round(rounds, 2.0)

    stop = only(last, Stop)
    assert stop == Stop(Phase.DONE, "completed 2 rounds")
    assert rounds.phase is Phase.DONE and rounds.completed_rounds == 2
    assert of_type(last, RoundOpened) == []
    (final,) = models(last)
    assert final.done and final.round == 2
    assert weights_equal(final.weights, rounds.weights)
    assert statuses(last)[-1].phase is Phase.DONE
    assert [m.round for m in rounds.history] == [1, 2]
    assert rounds.handle(Tick(), 1e9) == []


def test_run_stops_early_at_target_accuracy() -> None:
    rounds, _ = start(make_config(rounds=10, quorum=3, evaluate=True, target_accuracy=0.9))
    evaluate = only(_close_round(rounds, 1.0), Evaluate)
    assert evaluate.round_no == 1
    below = rounds.handle(Evaluated(1, {"accuracy": 0.5, "loss": 2.0}), 2.0)
    assert closed(below).accuracy == 0.5 and closed(below).loss == 2.0
    assert only(below, RoundOpened).round_no == 2
    _close_round(rounds, 3.0)

    reached = rounds.handle(Evaluated(2, {"accuracy": 0.9}), 4.0)

    stop = only(reached, Stop)
    assert stop.phase is Phase.DONE
    assert stop.message == "reached target accuracy 0.9000 >= 0.9 in round 2"
    assert rounds.completed_rounds == 2 and of_type(reached, RoundOpened) == []


def test_new_weights_take_effect_only_after_evaluation() -> None:
    rounds, _ = start(make_config(quorum=3, evaluate=True))
    evaluate = only(_close_round(rounds, 1.0), Evaluate)
    assert weights_equal(rounds.weights, W0)  # still the old global model
    assert rounds.phase is Phase.EVALUATING
    rounds.handle(Evaluated(1, {"accuracy": 0.5}), 2.0)
    assert weights_equal(rounds.weights, evaluate.weights)


def test_evaluate_false_skips_evaluation() -> None:
    rounds, _ = start(make_config(quorum=3, evaluate=False))
    actions = _close_round(rounds, 1.0)
    assert of_type(actions, Evaluate) == []
    assert closed(actions).accuracy is None
    assert rounds.completed_rounds == 1


def test_evaluated_for_another_round_is_ignored() -> None:
    rounds, _ = start(make_config(quorum=3, evaluate=True))
    _close_round(rounds, 1.0)
    assert rounds.handle(Evaluated(2, {"accuracy": 0.99}), 2.0) == []
    assert rounds.handle(Evaluated(0, {"accuracy": 0.99}), 2.0) == []
    assert rounds.phase is Phase.EVALUATING and rounds.completed_rounds == 0

    metrics = closed(rounds.handle(Evaluated(1, {"accuracy": 0.25}), 3.0))
    assert metrics.accuracy == 0.25
    assert rounds.handle(Evaluated(1, {"accuracy": 0.99}), 3.0) == []  # already used
    assert rounds.history[-1].accuracy == 0.25


def test_stop_requested_ends_the_run_with_the_reason() -> None:
    rounds, _ = start(make_config(quorum=3))
    reply(rounds, "a0", make_delta(0), 10, now=1.0)

    actions = rounds.handle(StopRequested("SIGTERM"), 2.0)

    assert only(actions, Stop) == Stop(Phase.DONE, "stopped: SIGTERM")
    assert rounds.phase is Phase.DONE and rounds.message == "stopped: SIGTERM"
    (final,) = models(actions)
    assert final.done and weights_equal(final.weights, W0)  # the open round is abandoned
    assert rounds.handle(StopRequested("again"), 3.0) == []
    assert rounds.handle(Tick(), 100.0) == []
    assert rounds.next_deadline() is None


def test_stop_requested_during_evaluation_ignores_the_late_evaluation() -> None:
    rounds, _ = start(make_config(quorum=3, evaluate=True))
    _close_round(rounds, 1.0)
    rounds.handle(StopRequested("operator"), 2.0)
    assert rounds.handle(Evaluated(1, {"accuracy": 1.0}), 3.0) == []
    assert rounds.phase is Phase.DONE and rounds.completed_rounds == 0


def test_stop_requested_while_waiting_ends_the_run() -> None:
    rounds, _ = start(make_config(min_agents=5))
    assert only(rounds.handle(StopRequested("bye"), 1.0), Stop).phase is Phase.DONE
    rounds.handle(PresenceArrived("a3", presence("a3")), 2.0)
    rounds.handle(PresenceArrived("a4", presence("a4")), 2.0)
    assert rounds.phase is Phase.DONE  # presence never reopens a finished run


def test_events_out_of_phase_change_nothing() -> None:
    rounds, _ = start(make_config(min_agents=5))
    before = observe(rounds, 0.0)
    assert rounds.handle(Evaluated(1, {"accuracy": 1.0}), 0.0) == []
    assert rounds.handle(Tick(), 1e6) == []
    assert_unchanged(before, observe(rounds, 1e6))
    assert rounds.phase is Phase.WAITING

    rounds, _ = start(make_config(quorum=3, evaluate=True))
    training = observe(rounds, 1.0)
    assert rounds.handle(Evaluated(1, {"accuracy": 1.0}), 1.0) == []  # nothing to evaluate yet
    assert_unchanged(training, observe(rounds, 1.0))


def test_failed_run_stays_failed() -> None:
    rounds, _ = start(make_config(quorum=3, on_short_round="stop"))
    rounds.handle(Tick(), 10.0)
    assert rounds.phase is Phase.FAILED
    mid = model_id_of(rounds)
    late = rounds.handle(UpdateArrived("a0", update_bytes("a0", 1, mid, D)), 11.0)
    assert only(late, MessageRejected).reason is RejectReason.NO_ROUND
    assert rounds.handle(StopRequested("x"), 12.0) == []
    assert rounds.phase is Phase.FAILED


# --- broker reconnects ---------------------------------------------------------------------------


def test_broker_connected_republishes_the_retained_model_and_status() -> None:
    rounds, opened = start(make_config(quorum=3))
    announced = publishes(opened, TopicKind.MODEL)[0]
    reply(rounds, "a0", make_delta(0), 10, now=1.0)
    before = observe(rounds, 2.0)

    actions = rounds.handle(BrokerConnected(), 2.0)

    assert publishes(actions, TopicKind.MODEL) == [announced]  # the same bytes, retained
    (status,) = statuses(actions)
    assert publishes(actions, TopicKind.STATUS)[0].retain
    assert (status.phase, status.round, status.accepted, status.agents_online) == (
        Phase.TRAINING,
        1,
        1,
        3,
    )
    assert of_type(actions, Stop) == []
    assert_unchanged(before, observe(rounds, 2.0))


def test_broker_connected_while_waiting_publishes_status_only() -> None:
    rounds, _ = start(make_config(min_agents=2), agents=("a0",))
    actions = rounds.handle(BrokerConnected(), 0.0)
    assert publishes(actions, TopicKind.MODEL) == []
    assert statuses(actions)[0].phase is Phase.WAITING


def test_broker_connected_after_the_run_republishes_the_final_model_and_stop() -> None:
    rounds, _ = start(make_config(rounds=1, quorum=1))
    reply(rounds, "a0", make_delta(0), 10, now=1.0)

    actions = rounds.handle(BrokerConnected(), 2.0)

    (final,) = models(actions)
    assert final.done and weights_equal(final.weights, rounds.weights)
    assert only(actions, Stop) == Stop(Phase.DONE, "completed 1 rounds")


def test_broker_connected_after_failure_republishes_the_final_model() -> None:
    rounds, _ = start(make_config(quorum=3, on_short_round="stop"))
    rounds.handle(Tick(), 10.0)

    actions = rounds.handle(BrokerConnected(), 11.0)

    (final,) = models(actions)
    assert final.done
    assert only(actions, Stop).phase is Phase.FAILED


# --- checkpoints in the action stream --------------------------------------------------------


def test_checkpoint_of_the_closed_round_is_saved_before_the_next_model_is_announced() -> None:
    rounds, _ = start(make_config(quorum=3))
    actions = _close_round(rounds, 1.0)

    saved_at = actions.index(only(actions, SaveCheckpoint))
    next_model_at = next(
        i
        for i, a in enumerate(actions)
        if isinstance(a, Publish) and parse_topic(a.topic).kind is TopicKind.MODEL
    )
    assert saved_at < next_model_at
    assert saved_at < actions.index(only(actions, RoundOpened))
    assert models(actions)[0].round == 2
    ckpt = only(actions, SaveCheckpoint).checkpoint
    assert (ckpt.job, ckpt.run, ckpt.task, ckpt.round) == (JOB, RUN, TASK, 1)
    assert weights_equal(ckpt.weights, rounds.weights)
    assert ckpt.history == (closed(actions),) == rounds.history


def test_last_checkpoint_comes_before_the_final_model() -> None:
    rounds, _ = start(make_config(rounds=1, quorum=3))
    actions = _close_round(rounds, 1.0)
    saved_at = actions.index(only(actions, SaveCheckpoint))
    final_at = actions.index(publishes(actions, TopicKind.MODEL)[0])
    assert saved_at < final_at < actions.index(only(actions, Stop))
    assert only(actions, SaveCheckpoint).checkpoint.round == 1


# --- the Fleet: coordinator and agents through real bytes ---------------------------------------


def fleet_config(**overrides: Any) -> RoundConfig:
    settings_: dict[str, Any] = {
        "job": JOB,
        "task": TASK,
        "rounds": 3,
        "deadline_s": 10.0,
        "min_agents": 3,
    }
    settings_.update(overrides)
    return RoundConfig(**settings_)


def fresh_trainers(fleet: Fleet) -> dict[str, LinearTrainer]:
    """Trainers equal to the fleet's but separate objects: the oracle shares no state."""
    return {a: LinearTrainer(t.index, t.samples) for a, t in fleet.trainers.items()}


def _kill_after_round(agent: str, round_no: int, *, will: bool) -> Callable[[Fleet, Action], None]:
    def hook(fleet: Fleet, action: Action) -> None:
        if isinstance(action, RoundClosed) and action.metrics.round == round_no:
            fleet.kill(agent, will=will)

    return hook


def _lose_next_update_of(agent: str, round_no: int) -> Callable[[Fleet, Action], None]:
    def hook(fleet: Fleet, action: Action) -> None:
        if isinstance(action, RoundOpened) and (action.round_no, action.attempt) == (round_no, 0):
            fleet.links[agent].drop_up = 1  # the announcement is still in flight

    return hook


def test_fleet_three_round_run_reaches_the_fedavg_weights() -> None:
    fleet = Fleet(3, fleet_config())

    fleet.start()

    assert fleet.rounds.phase is Phase.DONE and fleet.now == 0.0
    assert fleet.stop == Stop(Phase.DONE, "completed 3 rounds")
    assert [m.closed_by for m in fleet.closed()] == [ClosedBy.QUORUM] * 3
    assert [m.samples for m in fleet.closed()] == [60, 60, 60]
    expected = expected_fedavg(
        fleet.initial_weights, fresh_trainers(fleet), fleet.config.plan, [fleet.agent_ids] * 3
    )
    assert_weights_close(fleet.weights, expected)
    for agent, core in fleet.agents.items():
        assert [key[1] for key in fleet.trains_of(agent)] == [1, 2, 3]
        assert core.latest_model is not None and core.latest_model.done
        assert weights_equal(core.latest_model.weights, fleet.weights)
    accuracies = [m.accuracy for m in fleet.closed() if m.accuracy is not None]
    assert len(accuracies) == 3
    assert accuracies == sorted(accuracies)  # the regression improves every round
    assert fleet.rejections() == []


def test_fleet_dead_agent_without_will_makes_rounds_close_at_the_deadline() -> None:
    fleet = Fleet(3, fleet_config(min_replies=2))
    fleet.on_action = _kill_after_round("a2", 1, will=False)
    fleet.start()
    assert fleet.rounds.completed_rounds == 1 and fleet.rounds.phase is Phase.TRAINING

    assert fleet.advance_to_deadline() == 10.0
    assert fleet.advance_to_deadline() == 20.0

    assert fleet.rounds.phase is Phase.DONE
    closes = fleet.closed()
    assert [m.closed_by for m in closes] == [ClosedBy.QUORUM, ClosedBy.DEADLINE, ClosedBy.DEADLINE]
    assert [m.accepted for m in closes] == [3, 2, 2]
    assert [m.duration_s for m in closes] == [0.0, 10.0, 10.0]
    expected = expected_fedavg(
        fleet.initial_weights,
        fresh_trainers(fleet),
        fleet.config.plan,
        [["a0", "a1", "a2"], ["a0", "a1"], ["a0", "a1"]],
    )
    assert_weights_close(fleet.weights, expected)


def test_fleet_dead_agent_with_last_will_is_left_out_of_later_rounds() -> None:
    fleet = Fleet(3, fleet_config())
    fleet.on_action = _kill_after_round("a2", 1, will=True)
    fleet.start()
    # round 2 was announced before the will arrived: a2 was asked, so it is waited for
    assert fleet.of_type(RoundOpened)[1].cohort_size == 3
    assert fleet.rounds.agents_online == {"a0", "a1"}

    assert fleet.advance_to_deadline() == 10.0

    assert fleet.rounds.phase is Phase.DONE and fleet.now == 10.0  # round 3 needed no wait
    assert fleet.of_type(RoundOpened)[2].cohort_size == 2
    assert [(m.closed_by, m.accepted) for m in fleet.closed()] == [
        (ClosedBy.QUORUM, 3),
        (ClosedBy.DEADLINE, 2),
        (ClosedBy.QUORUM, 2),
    ]


def test_fleet_duplicate_delivery_everywhere_gives_the_clean_result() -> None:
    clean = Fleet(3, fleet_config())
    clean.start()
    noisy = Fleet(3, fleet_config())
    for link in noisy.links.values():
        link.duplicate = True

    noisy.start()

    assert noisy.rounds.phase is Phase.DONE
    assert weights_equal(noisy.weights, clean.weights)
    assert [m.accepted for m in noisy.closed()] == [3, 3, 3]
    reasons = {r.reason for r in noisy.rejections()}
    assert RejectReason.DUPLICATE in reasons
    assert reasons <= {RejectReason.DUPLICATE, RejectReason.STALE}
    for agent in noisy.agent_ids:  # a redelivered announcement never retrains
        assert [key[1] for key in noisy.trains_of(agent)] == [1, 2, 3]


def test_fleet_reordered_delivery_gives_the_clean_result() -> None:
    clean = Fleet(3, fleet_config())
    clean.start()
    shuffled = Fleet(3, fleet_config())
    shuffled.links["a0"].reorder = True
    shuffled.links["a1"].reorder = True

    shuffled.start()

    assert shuffled.rounds.phase is Phase.DONE
    arrivals = [a.agent for a in shuffled.actions if isinstance(a, UpdateAccepted)]
    assert arrivals[:3] == ["a2", "a0", "a1"]  # a0 and a1 were overtaken
    # arrival order changes the float64 summation order, nothing else
    assert_weights_close(shuffled.weights, clean.weights)


def test_fleet_lost_update_is_recovered_by_a_retry_resend() -> None:
    clean = Fleet(3, fleet_config(rounds=2))
    clean.start()
    fleet = Fleet(3, fleet_config(rounds=2, quorum=3, min_replies=3))
    fleet.on_action = _lose_next_update_of("a1", 1)
    fleet.start()
    assert fleet.rounds.phase is Phase.TRAINING and fleet.rounds.completed_rounds == 0
    assert fleet.stats.lost == 1

    assert fleet.advance_to_deadline() == 10.0

    assert fleet.rounds.phase is Phase.DONE
    opened = fleet.of_type(RoundOpened)
    assert [(o.round_no, o.attempt) for o in opened] == [(1, 0), (1, 1), (2, 0)]
    assert [m.closed_by for m in fleet.closed()] == [ClosedBy.QUORUM, ClosedBy.QUORUM]
    assert [k[1] for k in fleet.trains_of("a1")] == [1, 2]  # re-sent from cache, not retrained
    assert_weights_close(fleet.weights, clean.weights)  # a1's update arrives last now


def test_fleet_agent_reconnect_resends_its_answer_from_the_retained_model() -> None:
    fleet = Fleet(3, fleet_config(rounds=1, quorum=3))
    fleet.on_action = _lose_next_update_of("a2", 1)
    fleet.start()
    assert fleet.rounds.phase is Phase.TRAINING  # a2's update was lost

    fleet.reconnect("a2")

    assert fleet.rounds.phase is Phase.DONE and fleet.now == 0.0
    assert [key[1] for key in fleet.trains_of("a2")] == [1]


def test_fleet_declining_agent_lets_the_round_close_all_replied() -> None:
    fleet = Fleet(3, fleet_config(rounds=1, min_replies=2))
    fleet.failing.add("a1")

    fleet.start()

    (metrics,) = fleet.closed()
    assert (metrics.closed_by, metrics.accepted, metrics.declined) == (
        ClosedBy.ALL_REPLIED,
        2,
        1,
    )
    expected = expected_fedavg(
        fleet.initial_weights, fresh_trainers(fleet), fleet.config.plan, [["a0", "a2"]]
    )
    assert_weights_close(fleet.weights, expected)


def test_fleet_coordinator_broker_reconnect_changes_nothing() -> None:
    clean = Fleet(3, fleet_config())
    clean.start()
    fleet = Fleet(3, fleet_config())
    fleet.on_action = lambda f, a: (
        f.reconnect_coordinator() if isinstance(a, UpdateAccepted) and a.accepted == 1 else None
    )
    fleet.start()
    assert weights_equal(fleet.weights, clean.weights)


def test_fleet_failed_run_tells_the_surviving_agents_it_is_over() -> None:
    fleet = Fleet(2, fleet_config(min_agents=2, quorum=2, min_replies=2, max_retries=1))
    fleet.on_action = _kill_after_round("a1", 1, will=False)
    fleet.start()

    fleet.run_to_end()

    assert fleet.rounds.phase is Phase.FAILED and fleet.rounds.completed_rounds == 1
    assert fleet.stop is not None and "round 2" in fleet.stop.message
    assert "after 1 retries" in fleet.stop.message
    final = fleet.retained_model()
    assert final.done and weights_equal(final.weights, fleet.weights)
    finished = [a for a in fleet.agent_actions["a0"] if isinstance(a, RunFinished)]
    assert len(finished) == 1 and finished[0].model.done


def test_fleet_operator_stop_mid_round_tells_the_agents_it_is_over() -> None:
    fleet = Fleet(3, fleet_config())
    fleet.on_action = _kill_after_round("a2", 1, will=False)
    fleet.start()
    assert fleet.rounds.phase is Phase.TRAINING and fleet.rounds.completed_rounds == 1

    fleet.send(StopRequested("operator"))

    assert fleet.rounds.phase is Phase.DONE
    for agent in ("a0", "a1"):
        finished = [a for a in fleet.agent_actions[agent] if isinstance(a, RunFinished)]
        assert len(finished) == 1
        assert weights_equal(finished[0].model.weights, fleet.weights)
