"""Client sampling: seeded cohorts of online agents, named in the announcement (fake clock)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import (
    MessageRejected,
    PresenceArrived,
    RoundClosed,
    RoundConfig,
    RoundOpened,
    Rounds,
    Tick,
    UpdateArrived,
)
from coordinator.cohort import select_cohort
from protocol import (
    Phase,
    Presence,
    RejectReason,
    encode_presence,
)
from tests.helpers import (
    Fleet,
    announced,
    copy_weights,
    expected_fedavg,
    initial_weights,
    small_update,
    weights_equal,
)

JOB = "job1"
W0 = initial_weights()


def config(**overrides: Any) -> RoundConfig:
    settings: dict[str, Any] = {"job": JOB, "task": "linreg", "rounds": 5, "deadline_s": 10.0,
                                "evaluate": False}
    settings.update(overrides)
    return RoundConfig(**settings)


def presence(agent: str, *, online: bool = True, samples: int = 10,
             device: str | None = None) -> bytes:
    return encode_presence(Presence(agent, online, samples=samples, device=device))


def bring_online(rounds: Rounds, agents: list[str], **kw: Any) -> list[Any]:
    actions: list[Any] = []
    for a in agents:
        actions += rounds.handle(PresenceArrived(a, presence(a, **kw)), 0.0)
    return actions


# --- the draw --------------------------------------------------------------------------------


def test_draw_is_reproducible_for_a_seed_and_ignores_candidate_order() -> None:
    ids = {f"a{k}": 10 for k in range(20)}
    shuffled = dict(reversed(list(ids.items())))
    draws = [
        select_cohort(c, 5, "uniform", np.random.default_rng([7, 3, 0])) for c in (ids, shuffled)
    ]
    assert draws[0] == draws[1] and len(draws[0]) == 5 and draws[0] <= ids.keys()
    other = select_cohort(ids, 5, "uniform", np.random.default_rng([8, 3, 0]))
    assert other != draws[0]


def test_by_samples_favours_data_rich_agents() -> None:
    candidates = {"rich": 1000, **{f"p{k}": 1 for k in range(9)}}
    picks = Counter(
        a
        for seed in range(200)
        for a in select_cohort(candidates, 1, "by-samples", np.random.default_rng([seed]))
    )
    assert picks["rich"] > 180  # p = 1000/1009 per draw


def test_asking_for_all_returns_all() -> None:
    rng = np.random.default_rng(0)
    assert select_cohort({"a": 1, "b": None}, 5, "by-samples", rng) == {"a", "b"}


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"sample_fraction": 0.0}, "fraction must be in"),
        ({"sample_fraction": 1.5}, "fraction must be in"),
        ({"sample_fraction": 0.5, "sample_count": 2}, "not both"),
        ({"sample_count": 2, "quorum": 3}, "cannot meet quorum"),
        ({"sample_count": 1, "min_replies": 2}, "cannot meet quorum"),
        ({"sample_count": 3, "aggregator": "krum:1"}, "cannot meet quorum"),
        ({"sample_policy": "fastest"}, "sample policy"),
        ({"device_classes": frozenset()}, "device classes"),
    ],
)
def test_bad_sampling_is_refused_at_config_time(overrides: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        config(**overrides)


# --- rounds ----------------------------------------------------------------------------------


def test_the_announcement_names_a_seeded_cohort_of_the_asked_size() -> None:
    agents = [f"a{k}" for k in range(10)]
    cohorts = []
    for _ in range(2):
        rounds = Rounds(config(sample_count=3, min_agents=10), copy_weights(W0), run="r")
        (model,) = announced(bring_online(rounds, agents))
        cohorts.append(model.cohort)
    assert cohorts[0] == cohorts[1]
    assert cohorts[0] is not None and len(cohorts[0]) == 3
    assert list(cohorts[0]) == sorted(cohorts[0])
    seeded = Rounds(config(sample_count=3, min_agents=10, sample_seed=1), copy_weights(W0), run="r")
    (other,) = announced(bring_online(seeded, agents))
    assert other.cohort != cohorts[0]


def test_without_sampling_no_cohort_is_named() -> None:
    rounds = Rounds(config(min_agents=2), copy_weights(W0), run="r")
    (model,) = announced(bring_online(rounds, ["a0", "a1"]))
    assert model.cohort is None


def test_a_fraction_rounds_up_and_never_drops_below_what_the_round_needs() -> None:
    agents = [f"a{k}" for k in range(10)]
    rounds = Rounds(config(sample_fraction=0.25, min_agents=10), copy_weights(W0), run="r")
    (model,) = announced(bring_online(rounds, agents))
    assert model.cohort is not None and len(model.cohort) == 3  # ceil(2.5)
    rounds = Rounds(config(sample_fraction=0.1, min_replies=4, min_agents=10),
                    copy_weights(W0), run="r")
    (model,) = announced(bring_online(rounds, agents))
    assert model.cohort is not None and len(model.cohort) == 4


def test_never_picks_an_offline_agent() -> None:
    fleet = Fleet(8, config(rounds=30, sample_count=3, min_agents=6))
    for dead in ("a1", "a6"):  # never come online
        fleet.links[dead].dead = True

    def hook(f: Fleet, action: Any) -> None:
        if isinstance(action, RoundClosed) and action.metrics.round == 10:
            f.kill("a3")  # round 11 is drawn with the close; its last will follows

    fleet.on_action = hook
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE
    opened = [m.cohort for m in announced(list(fleet.actions)) if not m.done]
    assert len(opened) == 30
    for round_no, cohort in enumerate(opened, start=1):
        offline = {"a1", "a6"} | ({"a3"} if round_no > 11 else set())
        assert cohort is not None and len(cohort) == 3 and not offline & set(cohort)
    # every live agent is asked at some point
    assert {a for c in opened for a in c or ()} == {"a0", "a2", "a3", "a4", "a5", "a7"}


def test_agents_not_asked_do_not_train_and_the_model_is_the_cohorts_fedavg() -> None:
    cfg = config(rounds=4, sample_count=2, min_agents=5)
    fleet = Fleet(5, cfg)
    fleet.start()
    fleet.run_to_end()
    assert fleet.rounds.phase is Phase.DONE
    cohorts = [list(m.cohort or ()) for m in announced(list(fleet.actions)) if not m.done]
    assert len(cohorts) == 4
    for agent in fleet.agent_ids:
        asked = [r for r, c in enumerate(cohorts, start=1) if agent in c]
        assert [key[1] for key in fleet.trains_of(agent)] == asked
    want = expected_fedavg(fleet.initial_weights, fleet.trainers, cfg.plan, cohorts)
    np.testing.assert_allclose(fleet.weights["w"], want["w"], rtol=1e-6, atol=1e-7)
    assert [m.accepted for m in fleet.history] == [2, 2, 2, 2]


def test_an_update_from_an_agent_not_asked_is_rejected() -> None:
    agents = [f"a{k}" for k in range(6)]
    rounds = Rounds(config(sample_count=2, min_agents=6), copy_weights(W0), run="r")
    (model,) = announced(bring_online(rounds, agents))
    assert model.cohort is not None
    outsider = next(a for a in agents if a not in model.cohort)
    arrived = UpdateArrived(outsider, small_update(rounds, outsider))
    (reject,) = [a for a in rounds.handle(arrived, 1.0) if isinstance(a, MessageRejected)]
    assert reject.reason is RejectReason.NOT_IN_COHORT
    assert rounds.rejected_total == {"not_in_cohort": 1}


def test_a_device_class_filter_asks_only_those_devices() -> None:
    rounds = Rounds(config(device_classes=frozenset({"rpi4"}), min_agents=2),
                    copy_weights(W0), run="r")
    assert announced(bring_online(rounds, ["p0", "p1"], device="phone")) == []
    assert rounds.phase is Phase.WAITING  # two online, none eligible
    actions = bring_online(rounds, ["r0", "r1"], device="rpi4")
    (model,) = announced(actions)
    assert model.cohort == ("r0", "r1")


def test_a_retry_tops_the_cohort_up_with_agents_not_asked_yet() -> None:
    agents = [f"a{k}" for k in range(6)]
    cfg = config(sample_count=3, min_agents=6, min_replies=3, max_retries=2)
    rounds = Rounds(cfg, copy_weights(W0), run="r")
    (first,) = announced(bring_online(rounds, agents))
    assert first.cohort is not None
    gone, *rest = first.cohort
    rounds.handle(PresenceArrived(gone, presence(gone, online=False)), 1.0)
    for agent in rest:
        rounds.handle(UpdateArrived(agent, small_update(rounds, agent)), 2.0)
    retry = rounds.handle(Tick(), 10.0)
    (opened,) = [a for a in retry if isinstance(a, RoundOpened)]
    assert (opened.round_no, opened.attempt, opened.cohort_size) == (1, 1, 4)
    (second,) = announced(retry)
    assert second.cohort is not None
    assert set(first.cohort) < set(second.cohort)
    (newcomer,) = set(second.cohort) - set(first.cohort)
    assert newcomer != gone and newcomer in agents
    rounds.handle(UpdateArrived(newcomer, small_update(rounds, newcomer)), 11.0)
    assert rounds.completed_rounds == 1


def test_sampled_runs_are_reproducible() -> None:
    runs = []
    for _ in range(2):
        fleet = Fleet(6, config(rounds=5, sample_fraction=0.5, min_agents=6,
                                sample_policy="by-samples"))
        fleet.start()
        fleet.run_to_end()
        runs.append(fleet)
    assert weights_equal(runs[0].weights, runs[1].weights)
    cohorts = [[m.cohort for m in announced(list(f.actions))] for f in runs]
    assert cohorts[0] == cohorts[1]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.from_regex(r"a[0-9]{1,3}", fullmatch=True),
                    st.none() | st.integers(0, 10_000), min_size=0, max_size=40),
    st.integers(0, 45),
    st.sampled_from(["uniform", "by-samples"]),
    st.integers(0, 2**32 - 1),
)
def test_a_draw_is_a_subset_of_the_asked_size_and_a_function_of_its_seed(
    candidates: dict[str, int | None], size: int, policy: str, seed: int
) -> None:
    draw = select_cohort(candidates, size, policy, np.random.default_rng([seed, 1, 0]))
    assert draw <= candidates.keys()
    assert len(draw) == min(size, len(candidates))
    again = select_cohort(dict(sorted(candidates.items(), reverse=True)), size, policy,
                          np.random.default_rng([seed, 1, 0]))
    assert again == draw
