"""Partial aggregates into the round machine: merged exactly, or refused with a reason.

Every refusal is checked for its reason and for leaving the round (accepted set,
status, final model) as it was; merged partials must give the flat run's model bit
for bit.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from coordinator import (
    MessageRejected,
    PartialArrived,
    PartialMerged,
    PresenceArrived,
    RoundClosed,
    RoundConfig,
    Rounds,
    Tick,
    UpdateArrived,
)
from coordinator.aggregate import WeightedMean
from protocol import (
    Presence,
    Publish,
    RejectReason,
    TrainPlan,
    Update,
    Weights,
    encode_delta,
    encode_presence,
    encode_update,
    weights_digest,
)
from protocol.keys import SigningKey
from protocol.partial import (
    Contributor,
    PartialAggregate,
    Rejection,
    Verdict,
    decode_partial,
    decode_verdict,
    encode_partial,
)
from protocol.signing import Purpose, seal
from protocol.sumstate import SumState

WEIGHTS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4) / 12, "b": np.zeros(4, np.float32)}
SHAPES = {n: tuple(a.shape) for n, a in WEIGHTS.items()}
AGENTS = [f"a{i}" for i in range(6)]
MODEL_ID = weights_digest(WEIGHTS)
SITE_KEY = SigningKey.from_seed(b"s" * 32)


def config(**overrides: Any) -> RoundConfig:
    settings: dict[str, Any] = {"job": "j", "task": "t", "rounds": 2, "min_agents": 6,
                                "plan": TrainPlan(), "evaluate": False, "deadline_s": 10.0}
    settings.update(overrides)
    return RoundConfig(**settings)


def delta(agent: str, round_no: int = 1) -> Weights:
    rng = np.random.default_rng([int(agent[1:]), round_no])
    return {n: (rng.normal(0, 1e-2, s) * 10.0 ** rng.integers(-6, 2, s)).astype(np.float32)
            for n, s in SHAPES.items()}


def samples(agent: str) -> int:
    return 10 + 7 * int(agent[1:])


def update_bytes(agent: str, round_no: int = 1, model_id: str = MODEL_ID) -> bytes:
    d = delta(agent, round_no)
    return encode_update(Update(job="j", agent=agent, round=round_no, model_id=model_id,
                                samples=samples(agent), codec="none",
                                tensors=tuple(encode_delta(d, "none")),
                                metrics={"loss": 0.5, "accuracy": 0.75}))


def partial(site: str, agents: list[str], **overrides: Any) -> PartialAggregate:
    """What a site aggregator sends for ``agents``' round-1 updates."""
    mean = WeightedMean(SHAPES)
    for a in agents:
        mean.add(delta(a), samples(a))
    state = mean.partial()
    fields: dict[str, Any] = {
        "job": "j", "run": "run1", "round": 1, "model_id": MODEL_ID, "aggregator": site,
        "total": state.total, "total_weight": state.total_weight,
        "contributors": tuple(
            Contributor(a, samples(a), hashlib.sha256(update_bytes(a)).hexdigest(),
                        {"loss": 0.5, "accuracy": 0.75})
            for a in agents),
    }
    fields.update(overrides)
    return PartialAggregate(**fields)


def started(cfg: RoundConfig | None = None) -> Rounds:
    """A run with every agent online; their presences signed when ``cfg`` has agent keys."""
    cfg = cfg or config()
    rounds = Rounds(cfg, WEIGHTS, run="run1")
    for a in AGENTS:
        presence = encode_presence(Presence(agent=a, online=True, samples=samples(a)))
        if cfg.agent_keys is not None:
            presence = seal(presence, Purpose.PRESENCE, job=cfg.job, run="session-" + a,
                            signer=a, key=agent_key(a))
        rounds.handle(PresenceArrived(a, presence), 0.0)
    return rounds


def agent_key(agent: str) -> SigningKey:
    return SigningKey.from_seed(agent.encode() * 16)


def rejection(actions: list[Any]) -> MessageRejected:
    (rejected,) = [a for a in actions if isinstance(a, MessageRejected)]
    return rejected


def test_two_sites_give_the_flat_runs_model_bit_for_bit() -> None:
    flat = started()
    for a in reversed(AGENTS):
        flat.handle(UpdateArrived(a, update_bytes(a)), 1.0)
    two = started()
    merged = two.handle(PartialArrived("site-b", encode_partial(partial("site-b", AGENTS[3:]))),
                        1.0)
    assert [m.contributors for m in merged if isinstance(m, PartialMerged)] == [3]
    actions = two.handle(PartialArrived("site-a", encode_partial(partial("site-a", AGENTS[:3]))),
                         1.0)
    (closed,) = [a for a in actions if isinstance(a, RoundClosed)]
    assert closed.metrics.accepted == 6 and closed.metrics.closed_by.value == "quorum"
    assert closed.metrics.samples == sum(samples(a) for a in AGENTS)
    assert flat.completed_rounds == two.completed_rounds == 1
    for name in SHAPES:
        assert flat.weights[name].tobytes() == two.weights[name].tobytes()
    assert closed.metrics.train_loss == pytest.approx(flat.history[-1].train_loss)


def test_a_site_and_direct_updates_mix_and_the_deadline_closes_without_a_dead_site() -> None:
    rounds = started(config(min_replies=2))
    rounds.handle(UpdateArrived("a0", update_bytes("a0")), 1.0)
    rounds.handle(PartialArrived("site-b", encode_partial(partial("site-b", ["a4", "a5"]))), 1.0)
    assert rounds.completed_rounds == 0  # quorum is all six: the other site never answers
    actions = rounds.handle(Tick(), 11.0)
    (closed,) = [a for a in actions if isinstance(a, RoundClosed)]
    assert closed.metrics.accepted == 3 and closed.metrics.closed_by.value == "deadline"


def test_the_partials_rejections_and_declines_are_counted() -> None:
    rounds = started(config(min_replies=1))
    p = partial("site-a", AGENTS[:2], declined=("a2",),
                rejected=(Rejection("a9", RejectReason.UNKNOWN_AGENT, "never online"),))
    rounds.handle(PartialArrived("site-a", encode_partial(p)), 1.0)
    assert rounds.rejected_total == {"unknown_agent": 1}


def corrupt_digits(p: PartialAggregate) -> PartialAggregate:
    digits = p.total.digits.copy()
    digits[0, 0] = 2**41  # a digit below the top out of range
    return replace(p, total=SumState(p.total.low, digits))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: corrupt_digits(partial("site-a", ["a0"])), RejectReason.BAD_STATE),
        (lambda: replace(partial("site-a", ["a0"]), total_weight=999), RejectReason.BAD_STATE),
        (lambda: replace(partial("site-a", ["a0"]), total=SumState(0, np.ones((1, 3), np.int64))),
         RejectReason.BAD_STATE),
        (lambda: replace(partial("site-a", ["a0"]), round=2), RejectReason.FUTURE_ROUND),
        (lambda: replace(partial("site-a", ["a0"]), model_id="f" * 64),
         RejectReason.BASE_MISMATCH),
        (lambda: replace(partial("site-a", ["a0"]), job="other"), RejectReason.WRONG_JOB),
        (lambda: replace(partial("site-a", ["a0"]), run="run0"), RejectReason.WRONG_RUN),
        (lambda: replace(partial("site-a", ["a0"]), aggregator="site-b"),
         RejectReason.AGENT_MISMATCH),
        (lambda: partial("site-a", ["a0", "a9"]), RejectReason.UNKNOWN_AGENT),
    ],
)
def test_a_bad_partial_is_refused_with_its_reason_and_changes_nothing(
    make: Any, reason: RejectReason
) -> None:
    rounds = started()
    rounds.handle(UpdateArrived("a5", update_bytes("a5")), 1.0)
    status = rounds.handle(UpdateArrived("a5", update_bytes("a5")), 1.0)  # a duplicate
    actions = rounds.handle(PartialArrived("site-a", encode_partial(make())), 1.0)
    assert rejection(actions).reason is reason
    after = rounds.handle(UpdateArrived("a5", update_bytes("a5")), 1.0)
    assert rejection(after).reason is RejectReason.DUPLICATE  # still just a5 in, nothing else
    assert [a.payload for a in after if not isinstance(a, MessageRejected)] == [
        a.payload for a in status if not isinstance(a, MessageRejected)]
    # the honest partial is still taken in full
    rounds.handle(PartialArrived("site-a", encode_partial(partial("site-a", AGENTS[:5]))), 2.0)
    assert rounds.completed_rounds == 1


def verdicts(actions: list[Any]) -> list[Verdict]:
    return [decode_verdict(a.payload) for a in actions
            if isinstance(a, Publish) and a.topic.startswith("fedmq/v1/j/verdict/")]


def test_an_agent_counted_by_two_aggregators_refuses_the_second_partial() -> None:
    rounds = started()
    first = encode_partial(partial("site-a", ["a0", "a1"]))
    (merged,) = verdicts(rounds.handle(PartialArrived("site-a", first), 1.0))
    assert merged == Verdict(job="j", run="run1", round=1, aggregator="site-a",
                             partial=hashlib.sha256(first).hexdigest(), merged=True)
    second = encode_partial(partial("site-b", ["a1", "a2"]))
    actions = rounds.handle(PartialArrived("site-b", second), 1.0)
    rejected = rejection(actions)
    assert rejected.reason is RejectReason.DUPLICATE and "a1" in rejected.detail
    # the verdict goes to site-b alone and names whom it must leave out
    (refused,) = verdicts(actions)
    topics = [a.topic for a in actions if isinstance(a, Publish) and "verdict" in a.topic]
    assert topics == ["fedmq/v1/j/verdict/site-b"]
    assert (refused.merged, refused.reason, refused.counted) == (False, "duplicate", ("a1",))
    assert refused.partial == hashlib.sha256(second).hexdigest()
    # a direct update from an agent a site already counted is a duplicate too
    assert rejection(rounds.handle(UpdateArrived("a0", update_bytes("a0")), 1.0)).reason is (
        RejectReason.DUPLICATE)
    # one aggregator may send several partials a round (a worker's batches) ...
    again = rounds.handle(PartialArrived("site-a", encode_partial(partial("site-a", ["a3"]))), 1.0)
    assert any(isinstance(a, PartialMerged) for a in again)
    # ... but the same one twice counts its agents twice: refused
    replay = rounds.handle(PartialArrived("site-a", first), 1.0)
    assert rejection(replay).reason is RejectReason.DUPLICATE
    assert verdicts(replay)[0].counted == ("a0", "a1")
    (closed,) = [a for a in rounds.handle(Tick(), 11.0) if isinstance(a, RoundClosed)]
    assert closed.metrics.accepted == 3  # a0, a1 and a3, each once


def test_a_robust_aggregator_cannot_merge_partial_sums() -> None:
    rounds = started(config(aggregator="median"))
    actions = rounds.handle(PartialArrived("site-a", encode_partial(partial("site-a", ["a0"]))),
                            1.0)
    assert rejection(actions).reason is RejectReason.BAD_STATE
    assert "cannot merge" in rejection(actions).detail


def test_dp_fedavg_merges_the_clipped_sum_and_adds_noise_once() -> None:
    cfg = config(dp_noise=0.0, dp_clip=10.0)
    flat, two = started(cfg), started(cfg)
    for a in AGENTS:
        flat.handle(UpdateArrived(a, update_bytes(a)), 1.0)
    mean = WeightedMean(SHAPES, by_samples=False)
    for a in AGENTS:
        mean.add(delta(a), 1)
    p = partial("site-a", AGENTS, total=mean.partial().total, total_weight=len(AGENTS))
    two.handle(PartialArrived("site-a", encode_partial(p)), 1.0)
    for name in SHAPES:
        assert flat.weights[name].tobytes() == two.weights[name].tobytes()


def test_the_secure_profile_takes_only_partials_sealed_by_a_provisioned_aggregator() -> None:
    agents_keys = {a: agent_key(a).public for a in AGENTS}
    cfg = config(agent_keys=agents_keys, aggregator_keys={"site-a": SITE_KEY.public})
    rounds = started(cfg)
    body = encode_partial(partial("site-a", ["a0"]))
    unsigned = rounds.handle(PartialArrived("site-a", body), 1.0)
    assert rejection(unsigned).reason is RejectReason.UNSIGNED
    forged = seal(body, Purpose.PARTIAL, job="j", run="run1", signer="site-a",
                  key=SigningKey.from_seed(b"x" * 32))
    assert rejection(rounds.handle(PartialArrived("site-a", forged), 1.0)).reason is (
        RejectReason.BAD_SIGNATURE)
    sealed = seal(body, Purpose.PARTIAL, job="j", run="run1", signer="site-a", key=SITE_KEY)
    merged = rounds.handle(PartialArrived("site-a", sealed), 1.0)
    assert any(isinstance(a, PartialMerged) for a in merged)
    # without aggregator keys, the secure profile refuses every partial
    bare = started(config(agent_keys=agents_keys))
    assert rejection(bare.handle(PartialArrived("site-a", sealed), 1.0)).reason is (
        RejectReason.UNKNOWN_AGENT)


def test_a_partial_round_trips_and_its_decoder_refuses_double_listing() -> None:
    p = partial("site-a", AGENTS[:3], declined=("a4",),
                rejected=(Rejection(None, RejectReason.MALFORMED, "x" * 500),))
    back = decode_partial(encode_partial(p), 1 << 20)
    assert back.agents == p.agents and back.total.same(p.total)
    assert back.total_weight == p.total_weight and back.declined == ("a4",)
    assert len(back.rejected[0].detail) == 200  # cut to MAX_DETAIL
    twice = replace(p, contributors=p.contributors + p.contributors[:1])
    with pytest.raises(Exception) as info:
        decode_partial(encode_partial(twice), 1 << 20)
    assert getattr(info.value, "reason", None) is RejectReason.DUPLICATE
    both = replace(p, declined=("a0",))
    with pytest.raises(Exception) as info:
        decode_partial(encode_partial(both), 1 << 20)
    assert getattr(info.value, "reason", None) is RejectReason.DUPLICATE
