"""Server optimisers (Reddi et al. 2021, Algorithm 2): exact steps, FedAvg equivalence, resume."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from coordinator import (
    Action,
    Checkpoint,
    CheckpointError,
    RoundConfig,
    Rounds,
    SaveCheckpoint,
    load_checkpoint,
)
from coordinator.checkpoint import decode_checkpoint, encode_checkpoint
from coordinator.optimisers import OptState, ServerOptSpec, parse_server_opt
from protocol import Phase, Weights
from tests.helpers import Fleet, initial_weights, weights_equal

#: two rounds' pseudo-gradients for a 2-parameter model, exactly representable in float32
DELTAS = ([0.5, -1.0], [0.25, 0.5])


def config(**overrides: Any) -> RoundConfig:
    settings: dict[str, Any] = {"job": "job1", "task": "linreg", "rounds": 4, "deadline_s": 10.0,
                                "min_agents": 3}
    settings.update(overrides)
    return RoundConfig(**settings)


def run_steps(spec: str) -> list[list[float]]:
    """The model change of each round for ``DELTAS``."""
    opt, state = parse_server_opt(spec), OptState()
    changes = []
    for d in DELTAS:
        change, state = opt.step(state, {"x": np.array(d, np.float32)})
        changes.append([float(v) for v in change["x"]])
    return changes


# Each reference is the paper's rule written out for one coordinate in plain floats,
# m_{-1} = 0 and v_{-1} = tau^2, with the state rounded to float32 as the server keeps it.


def f32(x: float) -> float:
    return float(np.float32(x))


def reference(rule: Callable[[float, float], float], b1: float, lr: float, tau: float,
              ) -> list[list[float]]:
    out = []
    m, v = [0.0, 0.0], [tau * tau] * 2
    for d in DELTAS:
        m = [f32(b1 * m[i] + (1 - b1) * d[i]) for i in range(2)]
        v = [f32(rule(v[i], d[i])) for i in range(2)]
        out.append([f32(lr * m[i] / (math.sqrt(v[i]) + tau)) for i in range(2)])
    return out


def test_fedadam_matches_the_paper_update() -> None:
    want = reference(lambda v, d: 0.99 * v + 0.01 * d * d, b1=0.9, lr=0.1, tau=1e-3)
    assert run_steps("fedadam:lr=0.1,b1=0.9,b2=0.99,tau=1e-3") == want
    # round 1 by hand: m = 0.1 d, v = 0.99e-6 + 0.01 d^2, step = 0.1 m / (sqrt(v) + 1e-3)
    assert want[0] == pytest.approx([0.0980202, -0.0990050], rel=1e-6)


def test_fedyogi_matches_the_paper_update() -> None:
    def yogi(v: float, d: float) -> float:
        return v - 0.01 * d * d * math.copysign(1.0, v - d * d) if v != d * d else v

    want = reference(yogi, b1=0.9, lr=0.1, tau=1e-3)
    assert run_steps("fedyogi:lr=0.1,b1=0.9,b2=0.99,tau=1e-3") == want
    # round 1: v = 1e-6 + 0.01 d^2 (v < d^2, so v grows), the same as Adam's up to 1e-8
    assert want[0] == pytest.approx([0.0980202, -0.0990050], rel=1e-5)


def test_fedadagrad_matches_the_paper_update() -> None:
    want = reference(lambda v, d: v + d * d, b1=0.9, lr=0.1, tau=1e-3)
    assert run_steps("fedadagrad:lr=0.1,b1=0.9,tau=1e-3") == want
    # round 1: v = 1e-6 + d^2, step = 0.1 * 0.1 d / (sqrt(v) + 1e-3)
    assert want[0] == pytest.approx([0.00998002, -0.00999001], rel=1e-5)


def test_fedavgm_accumulates_momentum() -> None:
    # m1 = d1; m2 = 0.5 d1 + d2; change = 2 m
    assert run_steps("fedavgm:lr=2,momentum=0.5") == [[1.0, -2.0], [1.0, 0.0]]


def test_fedavg_passes_the_delta_through() -> None:
    assert run_steps("fedavg") == [list(d) for d in DELTAS]


def test_a_step_leaves_its_inputs_alone() -> None:
    opt = parse_server_opt("fedadam")
    delta: Weights = {"x": np.array([1.0, 2.0], np.float32)}
    _, s1 = opt.step(OptState(), delta)
    m1 = s1.m["x"].copy()
    opt.step(s1, delta)
    assert np.array_equal(s1.m["x"], m1) and s1.step == 1
    assert np.array_equal(delta["x"], [1.0, 2.0])


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("adam", "unknown server optimiser"),
        ("fedadam:lr=0", "lr must be > 0"),
        ("fedadam:b2=1", "b2 must be in"),
        ("fedyogi:tau=0", "tau must be > 0"),
        ("fedavgm:b1=0.9", "not a parameter of fedavgm"),
        ("fedadam:lr=fast", "is not a number"),
        ("fedavg:lr=1", "not a parameter of fedavg"),
    ],
)
def test_bad_specs_are_refused_at_config_time(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        config(server_opt=spec)


def test_spec_defaults_are_the_papers() -> None:
    assert parse_server_opt("fedyogi") == ServerOptSpec("fedyogi", lr=0.01, b1=0.9, b2=0.99,
                                                        tau=1e-3)
    assert parse_server_opt("fedadam:lr=0.03") == ServerOptSpec("fedadam", lr=0.03, b1=0.9,
                                                                b2=0.99, tau=1e-3)


def test_fedavgm_with_no_momentum_and_lr_one_is_fedavg() -> None:
    plain = Fleet(3, config())
    plain.start()
    momentum = Fleet(3, config(server_opt="fedavgm:lr=1,momentum=0"))
    momentum.start()
    assert plain.rounds.phase is momentum.rounds.phase is Phase.DONE
    assert weights_equal(plain.weights, momentum.weights)


def test_fedadam_moves_the_model_differently_from_fedavg() -> None:
    plain = Fleet(3, config())
    plain.start()
    adam = Fleet(3, config(server_opt="fedadam:lr=0.05"))
    adam.start()
    assert adam.rounds.phase is Phase.DONE
    assert not weights_equal(plain.weights, adam.weights)


def test_checkpoint_round_trips_the_optimiser_state() -> None:
    rng = np.random.default_rng(3)
    m = {"w": rng.normal(size=(4, 2)).astype(np.float32), "b": np.ones(2, np.float32)}
    v = {"w": rng.random((4, 2)).astype(np.float32), "b": np.full(2, 1e-6, np.float32)}
    ckpt = Checkpoint(job="job1", run="r", task="linreg", round=7, weights=initial_weights(),
                      opt_moments={"m": m, "v": v}, server_opt="fedyogi:lr=0.1",
                      server_steps=7, dp_rounds=((0.25, 1.1), (0.5, 1.1)))
    back = decode_checkpoint(encode_checkpoint(ckpt))
    assert back.server_opt == "fedyogi:lr=0.1" and back.server_steps == 7
    assert back.dp_rounds == ((0.25, 1.1), (0.5, 1.1))
    assert weights_equal(back.opt_moments["m"], m)
    assert weights_equal(back.opt_moments["v"], v)


def test_rounds_checkpoint_carries_moments_and_steps() -> None:
    fleet = Fleet(3, config(rounds=2, server_opt="fedadam"))
    fleet.start()
    ckpt = fleet.checkpoints[-1] if fleet.checkpoints else fleet.rounds.checkpoint()
    assert ckpt.server_steps == 2 and set(ckpt.opt_moments) == {"m", "v"}
    assert list(ckpt.opt_moments["m"]) == list(fleet.weights)


def crash_after_checkpoint(round_no: int) -> Callable[[Fleet, Action], None]:
    def hook(fleet: Fleet, action: Action) -> None:
        if isinstance(action, SaveCheckpoint) and action.checkpoint.round == round_no:
            fleet.crash_coordinator()

    return hook


@pytest.mark.parametrize("spec", ["fedavgm:lr=0.7,momentum=0.9", "fedadam:lr=0.05", "fedyogi",
                                  "fedadagrad:lr=0.05"])
def test_resume_equals_uninterrupted(spec: str, tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    uninterrupted = Fleet(3, config(server_opt=spec))
    uninterrupted.start()
    assert uninterrupted.rounds.phase is Phase.DONE

    fleet = Fleet(3, config(server_opt=spec), checkpoint_path=path)
    fleet.on_action = crash_after_checkpoint(2)
    fleet.start()
    assert not fleet.coordinator_up and fleet.rounds.completed_rounds == 2
    fleet.on_action = None
    fleet.restart_coordinator(resume=load_checkpoint(path))

    assert fleet.rounds.phase is Phase.DONE and fleet.rounds.completed_rounds == 4
    assert weights_equal(fleet.weights, uninterrupted.weights)
    assert [m.accuracy for m in fleet.history] == [m.accuracy for m in uninterrupted.history]


def test_resuming_with_another_optimiser_is_refused() -> None:
    fleet = Fleet(3, config(rounds=1, server_opt="fedadam"))
    fleet.start()
    with pytest.raises(ValueError, match="resume with the same --server-opt"):
        Rounds(config(server_opt="fedyogi"), initial_weights(), run="r",
               resume=fleet.rounds.checkpoint())


def test_a_checkpoint_from_before_server_optimisers_still_loads() -> None:
    doc = msgpack.unpackb(encode_checkpoint(Checkpoint(job="job1", run="r", task="linreg",
                                                       round=2, weights=initial_weights())))
    for key in ("server_opt", "server_steps", "dp_rounds"):
        del doc[key]
    old = decode_checkpoint(msgpack.packb(doc, use_bin_type=True))
    assert (old.server_opt, old.server_steps, old.dp_rounds) == ("fedavg", 0, ())


@pytest.mark.parametrize(
    ("key", "value"),
    [("server_steps", -1), ("server_steps", True), ("dp_rounds", [[0.0, 1.0]]),
     ("dp_rounds", [[0.5]]), ("dp_rounds", [[0.5, -1.0]]), ("dp_rounds", [[1.5, 1.0]])],
)
def test_a_corrupt_optimiser_or_dp_record_is_refused(key: str, value: object) -> None:
    doc = msgpack.unpackb(encode_checkpoint(Checkpoint(job="job1", run="r", task="linreg",
                                                       round=2, weights=initial_weights())))
    doc[key] = value
    with pytest.raises(CheckpointError):
        decode_checkpoint(msgpack.packb(doc, use_bin_type=True))
