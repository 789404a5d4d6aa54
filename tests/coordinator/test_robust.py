"""Robust aggregation, norm clipping and the exact sum: hand-computed references on tiny
arrays, order independence, refusals, and what the round machine does with a refusal."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import (
    Action,
    AggregationError,
    Evaluate,
    Evaluated,
    PresenceArrived,
    RoundClosed,
    RoundConfig,
    RoundOpened,
    Rounds,
    UpdateAccepted,
    UpdateArrived,
    load_checkpoint,
    make_aggregator,
    parse_aggregator,
)
from coordinator.aggregate import Aggregator, apply_delta
from coordinator.exactsum import ExactSum
from coordinator.robust import Krum, NormClip, trimmed_count
from protocol import (
    ClosedBy,
    Phase,
    Presence,
    Publish,
    Update,
    Weights,
    decode_status,
    encode_delta,
    encode_presence,
    encode_update,
    weights_digest,
)
from tests.helpers import Fleet, weights_equal

ONE = {"w": (2,)}
T = TypeVar("T")


def only(actions: list[Action], kind: type[T]) -> T:
    (found,) = [a for a in actions if isinstance(a, kind)]
    return found


def vec(*values: float) -> Weights:
    return {"w": np.array(values, np.float32)}


def combine(spec: str, deltas: list[Weights], weights: list[float] | None = None,
            shapes: dict[str, tuple[int, ...]] = ONE, clip: float | None = None) -> Weights:
    aggregator = make_aggregator(spec, shapes, clip_norm=clip)
    for k, delta in enumerate(deltas):
        aggregator.add(delta, weights[k] if weights else 1)
    return aggregator.result().delta


def random_deltas(seed: int, count: int) -> list[Weights]:
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(0, 1, (3, 4)).astype(np.float32),
             "b": rng.normal(0, 1, (4,)).astype(np.float32)} for _ in range(count)]


# --- hand-computed references ---------------------------------------------------------------


def test_median_of_an_odd_count_is_the_middle_value_per_coordinate() -> None:
    deltas = [vec(1, -5), vec(7, 0), vec(-2, 3)]
    np.testing.assert_array_equal(combine("median", deltas)["w"], [1, 0])


def test_median_of_an_even_count_averages_the_two_middle_values_without_overflow() -> None:
    deltas = [vec(1, 3e38), vec(4, 3e38), vec(10, 3e38), vec(-100, -1)]
    # middles (1, 4) and (3e38, 3e38): in float32 the second pair's sum would overflow
    np.testing.assert_array_equal(combine("median", deltas)["w"], np.float32([2.5, 3e38]))


def test_median_ignores_sample_counts() -> None:
    deltas = [vec(1, 1), vec(2, 2), vec(30, 30)]
    result = combine("median", deltas, weights=[1, 1, 10**9])
    np.testing.assert_array_equal(result["w"], [2, 2])


@pytest.mark.parametrize("spec", ["trimmed:1", "trimmed:0.2"])
def test_trimmed_mean_drops_one_from_each_end_of_five(spec: str) -> None:
    deltas = [vec(1, -50), vec(2, 0), vec(3, 1), vec(4, 2), vec(100, 3)]
    # coordinate 0: drop 1 and 100, mean(2, 3, 4) = 3; coordinate 1: drop -50, 3 -> 1
    np.testing.assert_array_equal(combine(spec, deltas)["w"], [3, 1])


def test_trimmed_count_is_exact_for_decimal_fractions() -> None:
    assert trimmed_count(0.29, 100) == 29  # 0.29 * 100 is 28.999999999999996 in float
    assert trimmed_count(0.2, 9) == 1 and trimmed_count(0.2, 10) == 2 and trimmed_count(2, 9) == 2


def test_krum_picks_the_update_closest_to_its_neighbours() -> None:
    # squared distances: a-b 1, a-c 4, a-d 18, b-c 5, b-d 13, c-d 10, e is far from all.
    # f=1, n=5: each scores its n-f-2 = 2 nearest: a 1+4=5, b 1+5=6, c 4+5=9, d 10+13=23
    deltas = [vec(0, 0), vec(1, 0), vec(0, 2), vec(3, 3), vec(10, 10)]
    krum = Krum(ONE, f=1)
    for delta in deltas:
        krum.add(delta, 1)
    rows = np.stack([d["w"] for d in deltas])
    np.testing.assert_array_equal(krum.scores(rows), [5, 6, 9, 23, 98 + 164])
    np.testing.assert_array_equal(krum.result().delta["w"], [0, 0])


def test_multikrum_averages_the_m_best_scored_updates() -> None:
    deltas = [vec(0, 0), vec(1, 0), vec(0, 2), vec(3, 3), vec(10, 10)]
    result = combine("multikrum:1:3", deltas)  # a, b, c
    np.testing.assert_array_equal(result["w"], np.float32([1 / 3, 2 / 3]))


def test_clipping_scales_a_long_delta_to_the_norm_and_leaves_a_short_one() -> None:
    aggregator = make_aggregator("fedavg", ONE, clip_norm=1.0)
    aggregator.add(vec(3, 4), 1)  # norm 5 -> (0.6, 0.8)
    aggregator.add(vec(0.2, 0), 3)  # norm 0.2: untouched
    assert isinstance(aggregator, NormClip) and aggregator.clipped == 1
    # (1 * (0.6, 0.8) + 3 * (0.2, 0)) / 4
    np.testing.assert_allclose(aggregator.result().delta["w"], [0.3, 0.2], rtol=1e-7)


def test_clipping_measures_the_norm_over_the_whole_model() -> None:
    shapes = {"a": (1,), "b": (1,)}
    delta = {"a": np.float32([6]), "b": np.float32([8])}  # norm 10 over both tensors
    result = combine("median", [delta], shapes=shapes, clip=5.0)
    np.testing.assert_allclose([result["a"][0], result["b"][0]], [3, 4], rtol=1e-7)


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "count", "message"),
    [
        ("krum:1", 4, "krum:1 needs n >= max(2f+3, m+f) = 5 updates, has 4"),
        ("multikrum:1:5", 5, "multikrum:1:5 needs n >= max(2f+3, m+f) = 6 updates, has 5"),
        ("trimmed:2", 4, "trimmed:2 cuts 2 of 4 updates from each end; it needs at least 5"),
        ("trimmed:0.2", 4, "trimmed:0.2 cuts 0 of 4 updates from each end; it needs at least 5"),
        ("median", 0, "needs at least 1 updates, has 0"),
        ("fedavg", 0, "no update was added"),
    ],
)
def test_a_round_below_the_requirement_is_refused_with_the_rule(
    spec: str, count: int, message: str
) -> None:
    aggregator = make_aggregator(spec, ONE)
    for delta in random_deltas(1, count):
        aggregator.add({"w": delta["b"][:2]}, 1)
    with pytest.raises(AggregationError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("+", r"\+")):
        aggregator.result()
    aggregator.add(vec(1, 1), 1)  # the refusal changed nothing: adding goes on
    if parse_aggregator(spec).min_updates <= count + 1:
        assert aggregator.result().count == count + 1


def test_a_model_that_would_overflow_is_refused_not_published_as_inf() -> None:
    mean = combine("fedavg", [vec(3e38, 0), vec(3e38, 0)], weights=[1, 1000])
    np.testing.assert_array_equal(mean["w"], np.float32([3e38, 0]))  # a mean always fits
    with pytest.raises(AggregationError, match="would not be finite"):
        apply_delta(vec(1e38, 0), mean)


@pytest.mark.parametrize("spec", ["median", "trimmed:1", "krum:0"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_or_misshapen_delta_is_refused_and_changes_nothing(
    spec: str, bad: float
) -> None:
    aggregator = make_aggregator(spec, ONE)
    good = [vec(1, 2), vec(3, 4), vec(5, 6)]
    for delta in good:
        aggregator.add(delta, 1)
    before = aggregator.result().delta
    with pytest.raises(ValueError, match="not finite"):
        aggregator.add(vec(1, bad), 1)
    with pytest.raises(ValueError, match="want shape"):
        aggregator.add({"w": np.zeros(3, np.float32)}, 1)
    assert weights_equal(aggregator.result().delta, before)


# --- specs and configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "need", "streaming"),
    [("fedavg", 1, True), ("mean", 1, True), ("median", 1, False), ("trimmed:0.2", 5, False),
     ("trimmed:0.4", 3, False), ("trimmed:3", 7, False), ("krum:0", 3, False),
     ("krum:2", 7, False), ("multikrum:2:4", 7, False), ("multikrum:1:8", 9, False)],
)
def test_specs_state_their_requirement(spec: str, need: int, streaming: bool) -> None:
    assert parse_aggregator(spec).min_updates == need
    assert make_aggregator(spec, ONE).needs_all is not streaming


@pytest.mark.parametrize(
    ("spec", "message"),
    [("mode", "unknown aggregator 'mode'"), ("krum", "krum takes 1 parameter"),
     ("krum:-1", "F must be an integer >= 0"), ("multikrum:1:0", "M must be an integer >= 1"),
     ("trimmed:0.5", "fraction in"), ("trimmed:1.0", "fraction in"), ("trimmed:x", "not a number"),
     ("median:1", "median takes 0 parameter")],
)
def test_bad_specs_are_value_errors_that_say_what_is_allowed(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_aggregator(spec)


def test_a_quorum_below_the_aggregators_requirement_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="krum:2 needs at least 7 updates a round; quorum 5"):
        RoundConfig(job="j", task="t", rounds=1, aggregator="krum:2", quorum=5)
    with pytest.raises(ValueError, match="clip_norm must be a positive number"):
        RoundConfig(job="j", task="t", rounds=1, clip_norm=0.0)


# --- order independence -------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["fedavg", "mean", "median", "trimmed:1", "multikrum:1:3"])
def test_every_arrival_order_gives_the_same_bits(spec: str) -> None:
    deltas = random_deltas(7, 5)
    samples = [13, 500, 7, 91, 2]
    results = [
        combine(spec, [deltas[i] for i in order], [samples[i] for i in order],
                shapes={"w": (3, 4), "b": (4,)})
        for order in itertools.permutations(range(5))
    ]
    assert all(weights_equal(r, results[0]) for r in results[1:])


def close_to(total: float, exact: Fraction) -> bool:
    """Within one float64 ulp of the exact value: the digits are summed top down."""
    return abs(Fraction(total) - exact) <= Fraction(math.ulp(float(exact)))


finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.lists(finite_f32, min_size=3, max_size=3), min_size=1, max_size=12),
    weights=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_exact_sum_is_the_true_sum_rounded_whatever_the_order(
    values: list[list[float]], weights: Any, seed: int
) -> None:
    ws = weights.draw(st.lists(st.integers(1, 2**40), min_size=len(values),
                               max_size=len(values)))
    arrays = [np.array(v, np.float32) for v in values]
    order = np.random.default_rng(seed).permutation(len(arrays))
    first, second = ExactSum(3), ExactSum(3)
    for a, w in zip(arrays, ws, strict=True):
        first.add(a, w)
    for k in order:
        second.add(arrays[k], ws[k])
    assert np.array_equal(first.total(), second.total())
    for i in range(3):
        exact = sum(Fraction(float(np.float64(a[i]) * w)) for a, w in zip(arrays, ws, strict=True))
        assert close_to(float(first.total()[i]), exact)


def test_the_exact_sum_stays_exact_across_many_carries() -> None:
    rng = np.random.default_rng(3)
    rows = [rng.normal(0, 1e6, 4).astype(np.float32) for _ in range(9000)]  # > 2 carry passes
    total = ExactSum(4)
    for row in rows:
        total.add(row, 2**28 + 1)  # 24-bit mantissas times 29 bits: all 53 bits of a float64
    for i, got in enumerate(total.total()):
        assert close_to(float(got), sum(Fraction(float(r[i])) * (2**28 + 1) for r in rows))


# --- the round machine and a refusal -------------------------------------------------------


def statuses(fleet: Fleet) -> list[bytes]:
    topic = fleet.rounds.topics.status
    return [a.payload for a in fleet.of_type(Publish) if a.topic == topic]


def robust_config(**overrides: Any) -> RoundConfig:
    settings_: dict[str, Any] = {"job": "job1", "task": "linreg", "rounds": 2,
                                 "deadline_s": 10.0, "min_agents": 4, "max_retries": 1}
    settings_.update(overrides)
    return RoundConfig(**settings_)


def test_a_round_krum_must_refuse_is_retried_then_stopped_with_the_rule_and_no_crash() -> None:
    fleet = Fleet(4, robust_config(aggregator="krum:1"))
    fleet.start()  # all four answer at once; krum:1 needs five, so the round stays open
    assert fleet.rounds.phase is Phase.TRAINING and fleet.history == ()

    fleet.advance_to_deadline()
    status = decode_status(fleet.retained[fleet.rounds.topics.status])
    assert status.attempt == 1
    assert status.message == (
        "round 1: krum:1 needs n >= max(2f+3, m+f) = 5 updates, has 4; retry 1 of 1"
    )
    fleet.run_to_end()

    assert fleet.rounds.phase is Phase.FAILED and fleet.stop is not None
    assert fleet.stop.message == (
        "round 1: krum:1 needs n >= max(2f+3, m+f) = 5 updates, has 4 after 1 retries; stopping"
    )
    assert weights_equal(fleet.weights, fleet.initial_weights)
    assert fleet.retained_model().done


def test_a_refused_round_closes_once_a_newcomer_brings_it_to_the_requirement() -> None:
    fleet = Fleet(5, robust_config(aggregator="krum:1", min_agents=4))
    fleet.links["a4"].dead = True  # a4 is off when round 1 opens
    fleet.start()
    fleet.advance_to_deadline()  # four updates: refused, retried
    assert fleet.rounds.phase is Phase.TRAINING and fleet.history == ()

    fleet.reconnect("a4")  # picks up the retained round-1 model and answers

    first = fleet.history[0]
    assert (first.round, first.accepted, first.closed_by) == (1, 5, ClosedBy.QUORUM)
    round_two = [s for s in map(decode_status, statuses(fleet))
                 if s.round == 2 and s.phase is Phase.TRAINING]
    assert round_two and all(s.message == "" for s in round_two)  # the retry's reason is gone


def test_clip_norm_applies_in_the_round_machine() -> None:
    plain, clipped = Fleet(4, robust_config(rounds=1)), Fleet(4, robust_config(
        rounds=1, clip_norm=1e-3))
    plain.start()
    clipped.start()
    moved_plain = np.linalg.norm(plain.weights["w"] - plain.initial_weights["w"])
    moved_clipped = np.linalg.norm(clipped.weights["w"] - clipped.initial_weights["w"])
    assert moved_clipped <= 1e-3 * (1 + 1e-6) < moved_plain


# --- exact resume: the same model whatever the arrival order -------------------------------


@pytest.mark.parametrize("spec", ["fedavg", "trimmed:1"])
def test_a_crash_mid_round_and_resume_in_another_order_gives_the_same_bits(
    spec: str, tmp_path: Path
) -> None:
    config = robust_config(rounds=4, aggregator=spec, min_agents=5)
    uninterrupted = Fleet(5, config)
    uninterrupted.start()
    uninterrupted.run_to_end()

    path = tmp_path / "ckpt"
    fleet = Fleet(5, config, checkpoint_path=path)

    def crash(f: Fleet, action: Action) -> None:
        if isinstance(action, UpdateAccepted) and (action.round_no, action.accepted) == (3, 3):
            f.crash_coordinator()

    fleet.on_action = crash
    fleet.start()
    fleet.on_action = None
    for agent in ("a0", "a2"):  # after the restart these re-sent answers come in last
        fleet.links[agent].reorder = True
    fleet.restart_coordinator(resume=load_checkpoint(path))
    fleet.run_to_end()

    assert fleet.rounds.phase is Phase.DONE
    assert [m.round for m in fleet.history] == [1, 2, 3, 4]
    assert weights_equal(fleet.weights, uninterrupted.weights)


def test_aggregators_satisfy_the_protocol() -> None:
    built: list[Aggregator] = [make_aggregator(s, ONE, clip_norm=c) for s in
                               ("fedavg", "median", "krum:0") for c in (None, 1.0)]
    assert [a.needs_all for a in built] == [False, False, True, True, True, True]


# --- the round machine under faults --------------------------------------------------------


def test_an_update_after_the_agents_last_will_keeps_it_in_the_next_cohort() -> None:
    # A broker restart: the old broker publishes every will as it stops, then a re-sent
    # update arrives before the agent's new presence does.
    fleet = Fleet(3, robust_config(rounds=2, min_agents=3))
    fleet.links["a2"].paused = True
    fleet.start()
    fleet.send(PresenceArrived("a2", fleet.agents["a2"].will().payload))
    assert "a2" not in fleet.rounds.agents_online

    fleet.release("a2")

    opened = fleet.of_type(RoundOpened)
    assert [(o.round_no, o.cohort_size) for o in opened] == [(1, 3), (2, 3)]
    assert [m.accepted for m in fleet.history] == [3, 3]


def test_reported_losses_that_overflow_and_a_diverged_evaluation_publish_no_metric() -> None:
    # Found by the soak: finite losses times sample counts summed to inf, and the metrics
    # document (JSON, no inf) could not be encoded: the round machine raised at close.
    weights = {"w": np.zeros((2,), np.float32)}
    config = robust_config(task="t", min_agents=1, max_samples=2**40)
    rounds = Rounds(config, weights, run="run1")
    rounds.handle(PresenceArrived("a0", encode_presence(Presence("a0", True, samples=1))), 0.0)
    update = Update(job="job1", agent="a0", round=1, model_id=weights_digest(weights),
                    samples=2**40, codec="none", metrics={"loss": 1e308, "accuracy": 1e308},
                    tensors=tuple(encode_delta(vec(1, 2), "none")))

    evaluate = only(rounds.handle(UpdateArrived("a0", encode_update(update)), 1.0), Evaluate)
    closed = only(rounds.handle(Evaluated(evaluate.round_no, {"loss": math.inf,
                                                              "accuracy": math.nan}), 2.0),
                  RoundClosed)

    m = closed.metrics
    assert (m.loss, m.accuracy, m.train_loss, m.train_accuracy) == (None, None, None, None)
    np.testing.assert_array_equal(rounds.weights["w"], [1, 2])
