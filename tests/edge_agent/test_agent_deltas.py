"""The agent's side of delta-coded models (docs/PROTOCOL.md §15.5), pure.

The messages are the coordinator's own (its Broadcast and Outbox), so what is tested is
the pair: a delta the agent can apply rebuilds the coordinator's version bit for bit; a
missed, reordered, corrupted or forged one makes it fetch the whole model and never
train on a model whose digest it has not checked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from coordinator import RoundConfig
from coordinator.broadcast import Broadcast
from coordinator.outbox import Outbox
from edge_agent.agent import (
    AgentAction,
    AgentCore,
    DeltaArrived,
    KeepModel,
    ModelArrived,
    ModelRejected,
    RunFinished,
    Subscribe,
    Train,
    TrainingDone,
    Unsubscribe,
    UpdateSent,
)
from edge_agent.downlink import HeldModel
from edge_agent.trainer import TrainResult
from protocol import (
    RejectReason,
    TopicKind,
    Topics,
    Weights,
    decode_model,
    decode_model_delta,
    encode_model,
    encode_model_delta,
    parse_topic,
)
from protocol.keys import SigningKey
from protocol.signing import Purpose, decode_signed, seal
from tests.helpers import initial_weights, weights_equal

JOB = "j"
TOPICS = Topics(JOB)
COORDINATOR_KEY = SigningKey.from_seed(bytes(range(32)))


class Coordinator:
    """The coordinator's side, without the round machine: one version per round."""

    def __init__(self, codec: str = "int8+zstd", *, signed: bool = False,
                 weights: Weights | None = None, max_payload: int = 0) -> None:
        self.config = RoundConfig(
            job=JOB, task="linreg", rounds=50, downlink_delta=codec,
            signing_key=COORDINATOR_KEY if signed else None, max_payload=max_payload,
        )
        self.g = weights if weights is not None else initial_weights()
        self.broadcast = Broadcast(self.config, self.g)
        self.outbox = Outbox(self.config)
        self.rng = np.random.default_rng(3)
        self.round = 1

    def next_round(self) -> None:
        """The round closes: the global model moves, and the next version is made."""
        self.g = {n: (a + self.rng.normal(0, 0.05, a.shape)).astype(np.float32)
                  for n, a in self.g.items()}
        self.broadcast.advance(self.g, self.round)
        self.round += 1

    def announce(self, *, done: bool = False, attempt: int = 0) -> tuple[list[bytes], bytes]:
        """(the whole model's payloads, the delta's payload) of the current announcement."""
        sent = self.outbox.announcement(
            run="r1", round_no=self.round, attempt=attempt, deadline_s=30.0,
            cohort=frozenset(), version=self.broadcast.version, now=float(self.round),
            done=done,
        )
        whole = [p.payload for p in sent.publishes if parse_topic(p.topic).kind is TopicKind.MODEL]
        (delta,) = self.delta_frames(sent.publishes)
        return whole, delta

    @staticmethod
    def delta_frames(publishes: Any) -> list[bytes]:
        return [p.payload for p in publishes if parse_topic(p.topic).kind is TopicKind.DELTA]

    @property
    def weights(self) -> Weights:
        return self.broadcast.version.weights


def agent(**kwargs: Any) -> AgentCore:
    return AgentCore(JOB, "a1", samples=10, trainer="fake", **kwargs)


def topics_of(core: AgentCore) -> list[str]:
    return [topic for topic, _ in core.subscriptions]


def of(actions: list[AgentAction], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def answer(core: AgentCore, actions: list[AgentAction]) -> Train:
    """The one Train among ``actions``, trained (unchanged weights) and answered."""
    (train,) = of(actions, Train)
    done = core.handle(TrainingDone(train.key, TrainResult(dict(train.model.weights), 10), 0.0))
    assert of(done, UpdateSent)
    return train


def join(core: AgentCore, c: Coordinator) -> Train:
    """A newcomer: the retained whole model and the notice beside it."""
    assert TOPICS.model in topics_of(core)
    whole, delta = c.announce()
    actions = [a for p in whole for a in core.handle(ModelArrived(p))]
    actions += core.handle(DeltaArrived(delta))
    train = answer(core, actions)
    assert of(actions, Unsubscribe) == [Unsubscribe(TOPICS.model_family)]  # deltas will do
    assert TOPICS.model not in topics_of(core) and TOPICS.delta in topics_of(core)
    return train


def test_an_agent_following_deltas_trains_on_the_coordinators_version_bit_for_bit() -> None:
    c, core = Coordinator(), agent()
    first = join(core, c)
    assert weights_equal(first.model.weights, c.weights)
    for _ in range(8):
        c.next_round()
        _, delta = c.announce()
        actions = core.handle(DeltaArrived(delta))
        assert [type(a) for a in actions] == [Train]  # no fetch, nothing else to keep
        train = answer(core, actions)
        assert weights_equal(train.model.weights, c.weights)
        assert train.model.model_id == c.broadcast.version.model_id
    assert core.held is not None and weights_equal(core.held.weights, c.weights)


@pytest.mark.parametrize("codec", ["none", "qsgd:2+zstd:9", "topk:0.5+int8"])
def test_any_codec_chain_rebuilds_the_version(codec: str) -> None:
    c, core = Coordinator(codec), agent()
    join(core, c)
    for _ in range(4):
        c.next_round()
        train = answer(core, core.handle(DeltaArrived(c.announce()[1])))
        assert weights_equal(train.model.weights, c.weights)


def test_a_missed_delta_fetches_the_whole_model_and_trains_only_on_it() -> None:
    c, core = Coordinator(), agent()
    join(core, c)
    c.next_round()  # version 1's delta never reaches the agent
    c.next_round()
    whole, delta = c.announce()
    actions = core.handle(DeltaArrived(delta))
    assert actions == [Subscribe(TOPICS.model_family)]  # no Train on a base it lacks
    # the broker answers the subscription with the retained whole model
    actions = [a for p in whole for a in core.handle(ModelArrived(p))]
    (train,) = of(actions, Train)
    assert weights_equal(train.model.weights, c.weights)
    assert of(actions, Unsubscribe) == [Unsubscribe(TOPICS.model_family)]


def test_a_delta_that_arrives_before_its_base_is_applied_once_the_base_comes() -> None:
    c, core = Coordinator(), agent()
    join(core, c)
    c.next_round()
    whole_1, _ = c.announce()  # version 1: the agent misses its delta
    c.next_round()
    _, delta_2 = c.announce()
    assert core.handle(DeltaArrived(delta_2)) == [Subscribe(TOPICS.model_family)]
    # a whole version 1 (still retained, or late) is the base delta 2 waited for
    actions = [a for p in whole_1 for a in core.handle(ModelArrived(p))]
    (train,) = of(actions, Train)
    assert train.model.round == c.round and weights_equal(train.model.weights, c.weights)
    assert of(actions, Unsubscribe) == [Unsubscribe(TOPICS.model_family)]


def test_a_reordered_older_delta_is_ignored() -> None:
    c, core = Coordinator(), agent()
    join(core, c)
    c.next_round()
    _, delta_1 = c.announce()
    c.next_round()
    _, delta_2 = c.announce()
    answer(core, core.handle(DeltaArrived(delta_1)))  # in order so far
    train_2 = answer(core, core.handle(DeltaArrived(delta_2)))
    assert core.handle(DeltaArrived(delta_1)) == []  # late: older than the version held
    assert core.held is not None and core.held.model_id == train_2.model.model_id


def corrupt(delta: bytes, **change: Any) -> bytes:
    return encode_model_delta(replace(decode_model_delta(delta), **change))


def flip_one_level(delta: bytes) -> bytes:
    d = decode_model_delta(delta)
    entry = dict(d.tensors[0])
    q = dict(entry["q"])
    data = bytearray(q["data"])
    data[0] = (data[0] + 1) % 128  # still a valid int8 level, another value
    entry["q"] = {**q, "data": bytes(data)}
    return encode_model_delta(replace(d, tensors=(entry, *d.tensors[1:])))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (flip_one_level, RejectReason.DIGEST_MISMATCH),
        (lambda d: corrupt(d, model_id="0" * 32), RejectReason.DIGEST_MISMATCH),
        (lambda d: corrupt(d, delta_codec="fp16"), RejectReason.BAD_CODEC),
        (lambda d: d[: len(d) // 2], RejectReason.MALFORMED),
        (lambda d: corrupt(d, dtype="<f8"), RejectReason.MALFORMED),
    ],
    ids=["a-changed-value", "a-wrong-id", "a-wrong-codec", "truncated", "bad-dtype"],
)
def test_a_corrupted_delta_is_refused_and_the_whole_model_fetched(spoil: Any,
                                                                 reason: RejectReason) -> None:
    c, core = Coordinator("int8"), agent()
    join(core, c)
    held = core.held
    c.next_round()
    whole, delta = c.announce()
    actions = core.handle(DeltaArrived(spoil(delta)))
    assert [type(a) for a in actions] == [ModelRejected, Subscribe]
    assert actions[0].reason is reason and not of(actions, Train)
    assert core.held == held and core.models_rejected == 1  # nothing else changed
    (train,) = of([a for p in whole for a in core.handle(ModelArrived(p))], Train)
    assert weights_equal(train.model.weights, c.weights)


def test_a_whole_model_whose_weights_do_not_match_its_id_is_never_trained_on() -> None:
    c, core = Coordinator(), agent()
    (whole,), _ = c.announce()
    model = decode_model(whole)
    wrong = {n: (a + np.float32(1e-3)).astype(np.float32) for n, a in model.weights.items()}
    actions = core.handle(ModelArrived(encode_model(replace(model, weights=wrong))))
    assert [type(a) for a in actions] == [ModelRejected]
    assert actions[0].reason is RejectReason.DIGEST_MISMATCH and core.held is None
    assert TOPICS.model in topics_of(core)  # still fetching


def test_a_restarted_agent_continues_from_its_kept_version_without_the_whole_model() -> None:
    c, core = Coordinator(), agent()
    join(core, c)
    c.next_round()
    answer(core, core.handle(DeltaArrived(c.announce()[1])))
    kept = core.held
    assert kept is not None
    # the process restarts: the state directory gives back the version (its id re-derived
    # from the weights read back) and the run's delta codec
    again = agent(held=HeldModel(kept.run, kept.round, kept.model_id, kept.weights,
                                 kept.done, kept.delta_codec))
    assert TOPICS.model not in topics_of(again) and again.unwanted == TOPICS.model_family
    _, retained = c.announce()  # the retained delta of the version it holds: a re-announcement
    train = answer(again, again.handle(DeltaArrived(retained)))
    assert train.model.model_id == kept.model_id
    c.next_round()
    actions = again.handle(DeltaArrived(c.announce()[1]))
    assert [type(a) for a in actions] == [Train]
    assert weights_equal(answer(again, actions).model.weights, c.weights)


def test_an_agent_restarted_from_a_run_without_deltas_fetches_whole_models() -> None:
    weights = initial_weights()
    held = HeldModel("old", 3, "x" * 32, weights, False, None)
    assert TOPICS.model in topics_of(agent(held=held))


def test_a_model_kept_while_not_training_is_persisted_with_keep_model() -> None:
    c, core = Coordinator(), agent()
    join(core, c)
    c.next_round()
    _, delta = c.announce()
    sampled_out = corrupt(delta, cohort=("someone-else",))
    (kept,) = core.handle(DeltaArrived(sampled_out))
    assert isinstance(kept, KeepModel) and weights_equal(kept.held.weights, c.weights)


def test_the_final_model_as_a_delta_ends_the_run_once() -> None:
    c, core = Coordinator(), agent()
    join(core, c)
    c.next_round()
    whole, delta = c.announce(done=True)
    (finished,) = core.handle(DeltaArrived(delta))
    assert isinstance(finished, RunFinished) and weights_equal(finished.model.weights, c.weights)
    assert core.handle(ModelArrived(whole[0])) == []  # the same final model, whole: said once


def test_signed_deltas_are_checked_like_models() -> None:
    c = Coordinator(signed=True)
    core = agent(coordinator_key=COORDINATOR_KEY.public)
    join(core, c)
    c.next_round()
    _, sealed = c.announce()
    answer(core, core.handle(DeltaArrived(sealed)))
    c.next_round()
    _, sealed = c.announce()
    body = decode_signed(sealed, 1 << 26).body  # what the seal wraps, sent bare
    assert of(core.handle(DeltaArrived(body)), ModelRejected)[0].reason is RejectReason.UNSIGNED
    as_model = seal(body, Purpose.MODEL, job=JOB, run="r1", signer="coordinator",
                    key=COORDINATOR_KEY)
    refused = of(core.handle(DeltaArrived(as_model)), ModelRejected)
    assert refused[0].reason is RejectReason.MALFORMED  # a model's signature is not a delta's
    (train,) = of(core.handle(DeltaArrived(sealed)), Train)
    assert weights_equal(train.model.weights, c.weights)



def test_chunked_deltas_reassemble_in_any_order_and_apply() -> None:
    rng = np.random.default_rng(9)
    big = {"w": rng.normal(0, 0.1, (64, 40)).astype(np.float32),
           "b": np.zeros(40, dtype=np.float32)}
    c, core = Coordinator("int8", weights=big, max_payload=1024), agent()
    sent = c.outbox.announcement(run="r1", round_no=1, attempt=0, deadline_s=30.0,
                                 cohort=frozenset(), version=c.broadcast.version, now=1.0)
    actions = [a for p in sent.publishes
               for a in core.handle(DeltaArrived(p.payload)
                                    if parse_topic(p.topic).kind is TopicKind.DELTA
                                    else ModelArrived(p.payload))]
    answer(core, actions)
    c.next_round()
    sent = c.outbox.announcement(run="r1", round_no=2, attempt=0, deadline_s=30.0,
                                 cohort=frozenset(), version=c.broadcast.version, now=2.0)
    frames = c.delta_frames(sent.publishes)
    assert len(frames) > 3 and all(len(f) <= 1024 for f in frames)  # chunks, then a manifest
    order = rng.permutation(len(frames))
    actions = [a for i in order for a in core.handle(DeltaArrived(frames[i]))]
    train = answer(core, actions)
    assert weights_equal(train.model.weights, c.weights) and not of(actions, Subscribe)
