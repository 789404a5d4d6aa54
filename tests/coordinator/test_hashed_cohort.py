"""Hashed cohorts (docs/PROTOCOL.md §17): one threshold in place of a list of ids (fake clock)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from coordinator import (
    MessageRejected,
    PresenceArrived,
    RoundConfig,
    RoundOpened,
    Rounds,
    Tick,
    UpdateArrived,
)
from coordinator.broadcast import Version
from coordinator.cohort import CohortPolicy
from coordinator.config import SecAggPolicy
from coordinator.global_model import GlobalModel
from coordinator.outbox import Outbox
from coordinator.staleness import BufferConfig, unsupported_in_buffered
from protocol import (
    Phase,
    Presence,
    RejectReason,
    asks,
    encode_presence,
    weights_digest,
)
from protocol.cohort_hash import below_for, in_cohort
from tests.helpers import Fleet, announced, copy_weights, initial_weights, small_update

JOB = "job1"
W0 = initial_weights()


def config(**overrides: Any) -> RoundConfig:
    settings: dict[str, Any] = {"job": JOB, "task": "linreg", "rounds": 3, "deadline_s": 10.0,
                                "evaluate": False, "cohort_by": "hash", "sample_fraction": 0.3}
    settings.update(overrides)
    return RoundConfig(**settings)


def announcement_bytes(cfg: RoundConfig, fleet: int) -> int:
    """The encoded announcement of round 1 when ``fleet`` agents are eligible."""
    eligible = frozenset(f"agent-{k:06d}" for k in range(fleet))
    aggregator = GlobalModel(cfg, copy_weights(W0), None).aggregator
    rs = CohortPolicy(cfg, "r1").open(1, eligible, {}, 0.0, aggregator=aggregator)
    sent = Outbox(cfg).announcement(run="r1", round_no=1, attempt=0, deadline_s=10.0,
                                    cohort=rs.cohort, version=Version(W0, weights_digest(W0)),
                                    now=0.0)
    return sent.whole_bytes


def test_announcement_size_does_not_grow_with_the_fleet() -> None:
    hashed = [announcement_bytes(config(), n) for n in (100, 100_000)]
    assert hashed[0] == hashed[1]
    named = [announcement_bytes(config(cohort_by="name"), n) for n in (100, 100_000)]
    assert named[1] - named[0] > 250_000  # ~30,000 more ids of 13 bytes each
    assert hashed[0] < named[0]  # 28 bytes of hash against 30 ids


def test_the_drawn_fraction_is_binomial_around_f() -> None:
    """10,000 agents at F = 0.1: mean 1,000, sd 30; every round within 5 sd of it."""
    n, f = 10_000, 0.1
    eligible = frozenset(f"agent-{k:05d}" for k in range(n))
    policy = CohortPolicy(config(sample_fraction=f), "run-x")
    sizes = [len(policy.hashed(eligible, r)) for r in range(1, 6)]
    sd = math.sqrt(n * f * (1 - f))
    assert all(abs(size - n * f) <= 5 * sd for size in sizes), sizes
    assert len(set(sizes)) > 1  # each round draws afresh
    assert policy.hashed(eligible, 1) != policy.hashed(eligible, 2)


def test_agents_train_iff_the_coordinator_counts_them() -> None:
    fleet = Fleet(20, config(min_agents=20))
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE
    models = [m for m in announced(list(fleet.actions)) if not m.done]
    assert [m.round for m in models] == [1, 2, 3]
    for m in models:
        assert m.cohort is None and m.cohort_hash is not None
        assert m.cohort_hash.below == below_for(0.3)
        passing = {a for a in fleet.agent_ids if in_cohort(m.cohort_hash, JOB, "run1", m.round, a)}
        assert passing == {a for a in fleet.agent_ids if asks(m, a)}
        trained = {a for a in fleet.agent_ids if any(k[1] == m.round for k in fleet.trains_of(a))}
        assert trained == passing and passing
    assert [h.accepted for h in fleet.history] == [
        sum(asks(m, a) for a in fleet.agent_ids) for m in models]


@pytest.mark.parametrize("delta", [None, "int8"], ids=["whole-models", "deltas"])
def test_agents_agree_whether_models_travel_whole_or_as_deltas(delta: str | None) -> None:
    """The agent rebuilds a delta's announcement (protocol.broadcast) with its cohort_hash."""
    fleet = Fleet(20, config(min_agents=20, downlink_delta=delta))
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE
    for r in (1, 2, 3):
        passing = {a for a in fleet.agent_ids
                   if in_cohort(config().cohort_hash, JOB, "run1", r, a)}  # type: ignore[arg-type]
        assert {a for a in fleet.agent_ids if any(k[1] == r for k in fleet.trains_of(a))} == passing


def test_a_retry_asks_the_same_agents_and_newcomers_that_pass() -> None:
    agents = [f"a{k}" for k in range(40)]
    rounds = Rounds(config(min_agents=20, max_retries=2), copy_weights(W0), run="r1")
    actions: list[Any] = []
    for a in agents[:20]:
        actions += rounds.handle(PresenceArrived(a, encode_presence(Presence(a, True))), 0.0)
    (first,) = announced(actions)
    (opened,) = [a for a in actions if isinstance(a, RoundOpened)]
    asked = [a for a in agents[:20] if asks(first, a)]
    assert opened.cohort_size == opened.quorum == len(asked)
    for a in agents[20:]:
        rounds.handle(PresenceArrived(a, encode_presence(Presence(a, True))), 1.0)
    retry = rounds.handle(Tick(), 10.5)  # nobody answered: attempt 1
    (again,) = announced(retry)
    (reopened,) = [a for a in retry if isinstance(a, RoundOpened)]
    assert (again.attempt, again.cohort_hash, again.cohort) == (1, first.cohort_hash, None)
    assert reopened.cohort_size == sum(asks(again, a) for a in agents) > len(asked)


def test_rule_10_refuses_an_agent_that_fails_the_hash() -> None:
    agents = [f"a{k}" for k in range(12)]
    rounds = Rounds(config(min_agents=12), copy_weights(W0), run="r1")
    actions: list[Any] = []
    for a in agents:
        actions += rounds.handle(PresenceArrived(a, encode_presence(Presence(a, True))), 0.0)
    (model,) = announced(actions)
    outside = [a for a in agents if not asks(model, a)]
    inside = [a for a in agents if asks(model, a)]
    assert outside and inside
    refused = rounds.handle(UpdateArrived(outside[0], small_update(rounds, outside[0])), 1.0)
    (rejected,) = [a for a in refused if isinstance(a, MessageRejected)]
    assert rejected.reason is RejectReason.NOT_IN_COHORT
    taken = rounds.handle(UpdateArrived(inside[0], small_update(rounds, inside[0])), 1.0)
    assert not [a for a in taken if isinstance(a, MessageRejected)]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"sample_fraction": None}, "needs --sample-fraction"),
        ({"sample_fraction": None, "sample_count": 5}, "--sample-count"),
        ({"sample_policy": "by-samples"}, "by-samples"),
        ({"device_classes": frozenset({"rpi4"})}, "--device-class"),
        ({"secagg": SecAggPolicy()}, "--secagg"),
        ({"cohort_by": "fastest"}, "cohort_by must be one of"),
    ],
)
def test_what_an_agent_cannot_check_is_refused_at_config_time(
    overrides: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        config(**overrides)


def test_fedbuff_refuses_a_hashed_cohort() -> None:
    with pytest.raises(ValueError, match="hashed cohort"):
        unsupported_in_buffered(config(), BufferConfig(k=2))


def test_an_allow_list_is_fine() -> None:
    cfg = config(allowed_agents=frozenset({"a0", "a1"}))
    assert cfg.cohort_hash is not None and not cfg.names_cohort
