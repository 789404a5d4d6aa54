"""Checkpoints: exact round trips, atomic files, loud corruption, and resuming a run."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import (
    Action,
    BrokerConnected,
    Checkpoint,
    CheckpointError,
    PresenceArrived,
    RoundConfig,
    RoundOpened,
    Rounds,
    SaveCheckpoint,
    Stop,
    UpdateAccepted,
    load_checkpoint,
    save_checkpoint,
)
from coordinator.checkpoint import decode_checkpoint, encode_checkpoint
from protocol import (
    ClosedBy,
    Phase,
    Presence,
    RoundMetrics,
    encode_presence,
    weights_digest,
)
from tests.helpers import Fleet, announced, copy_weights, initial_weights, weights_equal

JOB, TASK = "job1", "linreg"


def metrics(round_no: int, accuracy: float | None = None) -> RoundMetrics:
    return RoundMetrics(
        job=JOB,
        run="run1",
        round=round_no,
        closed_by=ClosedBy.DEADLINE if round_no % 2 else ClosedBy.QUORUM,
        accepted=3,
        declined=1,
        rejected={"duplicate": 2} if round_no == 1 else {},
        samples=60,
        duration_s=1.25 * round_no,
        bytes_up=1000 + round_no,
        bytes_down=2000,
        raw_bytes_up=800,
        accuracy=accuracy,
        loss=None if accuracy is None else 1.0 - accuracy,
        train_loss=0.5,
        at=1_700_000_000.0 + round_no,
    )


def sample_checkpoint(round_no: int = 2) -> Checkpoint:
    rng = np.random.default_rng(0)
    return Checkpoint(
        job=JOB,
        run="run1",
        task=TASK,
        round=round_no,
        weights={
            "w": rng.normal(size=(4, 2)).astype(np.float32),
            "b": np.array([np.float32(1e-38), -0.0], dtype=np.float32),
            "scale": np.array(3.5, dtype=np.float32),  # shape ()
        },
        history=tuple(metrics(r, accuracy=0.5 + r / 10 if r > 1 else None) for r in range(1, 3)),
        rejected={"duplicate": 2, "malformed": 1},
        opt_moments={"momentum": {"w": rng.normal(size=(4, 2)).astype(np.float32)}},
    )


def assert_same_checkpoint(actual: Checkpoint, expected: Checkpoint) -> None:
    assert (actual.job, actual.run, actual.task, actual.round) == (
        expected.job,
        expected.run,
        expected.task,
        expected.round,
    )
    assert weights_equal(actual.weights, expected.weights)
    assert actual.history == expected.history
    assert dict(actual.rejected) == dict(expected.rejected)
    assert list(actual.opt_moments) == list(expected.opt_moments)
    for name, group in expected.opt_moments.items():
        assert weights_equal(actual.opt_moments[name], group)


# --- encoding ------------------------------------------------------------------------------


def test_encode_decode_round_trip_is_exact() -> None:
    ckpt = sample_checkpoint()
    assert_same_checkpoint(decode_checkpoint(encode_checkpoint(ckpt)), ckpt)


def test_round_trip_keeps_bits_of_signed_zero_and_subnormals() -> None:
    ckpt = sample_checkpoint()
    decoded = decode_checkpoint(encode_checkpoint(ckpt))
    assert decoded.weights["b"].tobytes() == ckpt.weights["b"].tobytes()
    assert decoded.weights["scale"].shape == ()


def test_checkpoint_of_round_zero_with_no_history_round_trips() -> None:
    ckpt = Checkpoint(job=JOB, run="r", task=TASK, round=0, weights=initial_weights())
    assert_same_checkpoint(decode_checkpoint(encode_checkpoint(ckpt)), ckpt)


def _doc(**changes: Any) -> bytes:
    doc = msgpack.unpackb(encode_checkpoint(sample_checkpoint()), raw=False)
    doc.update(changes)
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "random_bytes": np.random.default_rng(0).bytes(300),
    "msgpack_list": msgpack.packb([1, 2, 3]),
    "another_type": _doc(type="model"),
    "other_version": _doc(v=2),
    "no_version": _doc(v=None),
    "negative_round": _doc(round=-1),
    "round_not_int": _doc(round="3"),
    "missing_weights": _doc(weights=None),
    "weights_not_list": _doc(weights={"w": 1}),
    "nan_weights": _doc(
        weights=[{"name": "w", "dtype": "<f4", "shape": [1], "data": np.float32("nan").tobytes()}]
    ),
    "bad_history_entry": _doc(history=[b"{}"]),
    "rejected_not_a_map": _doc(rejected=[1]),
    "rejected_bad_count": _doc(rejected={"x": "many"}),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_checkpoint_raises_checkpoint_error(case: str) -> None:
    with pytest.raises(CheckpointError):
        decode_checkpoint(CORRUPT[case])


def test_other_version_error_names_the_version() -> None:
    with pytest.raises(CheckpointError, match="version 2"):
        decode_checkpoint(CORRUPT["other_version"])


ENCODED = encode_checkpoint(sample_checkpoint())


@settings(max_examples=80, deadline=None)
@given(cut=st.integers(0, len(ENCODED) - 1))
def test_every_truncation_raises_checkpoint_error(cut: int) -> None:
    with pytest.raises(CheckpointError):
        decode_checkpoint(ENCODED[:cut])


# --- files -----------------------------------------------------------------------------------


def test_save_then_load_round_trips_and_leaves_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "run.ckpt"  # the directory is created
    ckpt = sample_checkpoint()

    save_checkpoint(path, ckpt)

    assert_same_checkpoint(load_checkpoint(path), ckpt)
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.ckpt"]


def test_save_replaces_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, sample_checkpoint(round_no=1))
    inode_before = path.stat().st_ino

    save_checkpoint(path, sample_checkpoint(round_no=2))

    assert load_checkpoint(path).round == 2
    assert path.stat().st_ino != inode_before  # renamed over, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_save_keeps_the_old_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, sample_checkpoint(round_no=1))
    old_bytes = path.read_bytes()

    def boom(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, sample_checkpoint(round_no=2))
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert load_checkpoint(path).round == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


def test_truncated_file_on_disk_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    save_checkpoint(path, sample_checkpoint())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_loading_a_missing_checkpoint_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nothing.ckpt")


# --- resuming a Rounds -------------------------------------------------------------------------


def config(**overrides: Any) -> RoundConfig:
    settings_: dict[str, Any] = {
        "job": JOB,
        "task": TASK,
        "rounds": 5,
        "deadline_s": 10.0,
        "min_agents": 3,
    }
    settings_.update(overrides)
    return RoundConfig(**settings_)


def presence(agent: str) -> bytes:
    return encode_presence(Presence(agent=agent, online=True, samples=10))


def bring_online(rounds: Rounds, agents: tuple[str, ...] = ("a0", "a1", "a2")) -> list[Action]:
    actions: list[Action] = []
    for agent in agents:
        actions += rounds.handle(PresenceArrived(agent, presence(agent)), 0.0)
    return actions


def test_resumed_rounds_continue_at_the_next_round_with_the_same_run_and_model(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.ckpt"
    ckpt = dataclasses.replace(sample_checkpoint(round_no=2), run="original-run")
    save_checkpoint(path, ckpt)

    rounds = Rounds(config(), initial_weights(), run="another-run", resume=load_checkpoint(path))

    assert rounds.run == "original-run"
    assert rounds.completed_rounds == 2 and rounds.phase is Phase.WAITING
    assert weights_equal(rounds.weights, ckpt.weights)
    assert rounds.history == ckpt.history
    assert rounds.rejected_total == {"duplicate": 2, "malformed": 1}
    actions = bring_online(rounds)
    opened = [a for a in actions if isinstance(a, RoundOpened)]
    assert [(o.round_no, o.attempt) for o in opened] == [(3, 0)]
    (model,) = announced(actions)
    assert (model.run, model.round, model.model_id) == (
        "original-run",
        3,
        weights_digest(ckpt.weights),
    )
    assert weights_equal(model.weights, ckpt.weights)


def test_resuming_a_finished_run_is_done_at_once_and_says_so_on_connect() -> None:
    weights = initial_weights()
    ckpt = Checkpoint(job=JOB, run="r", task=TASK, round=5, weights=weights)
    rounds = Rounds(config(rounds=5), copy_weights(weights), run="r", resume=ckpt)
    assert rounds.phase is Phase.DONE and rounds.finished
    assert not any(isinstance(a, RoundOpened) for a in bring_online(rounds))

    actions = rounds.handle(BrokerConnected(), 0.0)

    (final,) = announced(actions)
    assert final.done and final.round == 5 and weights_equal(final.weights, weights)
    assert [a for a in actions if isinstance(a, Stop)] == [
        Stop(Phase.DONE, "already completed 5 rounds")
    ]


@pytest.mark.parametrize(("job", "task"), [("other-job", TASK), (JOB, "other-task")])
def test_resuming_another_job_or_task_is_a_value_error(job: str, task: str) -> None:
    ckpt = Checkpoint(job=job, run="r", task=task, round=1, weights=initial_weights())
    with pytest.raises(ValueError, match="checkpoint is for job"):
        Rounds(config(), initial_weights(), run="r", resume=ckpt)


# --- resuming a whole run: the Fleet ----------------------------------------------------------


def crash_after_checkpoint(round_no: int) -> Callable[[Fleet, Action], None]:
    """A hook: the coordinator process dies right after writing this round's checkpoint."""

    def hook(fleet: Fleet, action: Action) -> None:
        if isinstance(action, SaveCheckpoint) and action.checkpoint.round == round_no:
            fleet.crash_coordinator()

    return hook


def test_run_interrupted_after_round_k_and_resumed_gives_bit_identical_weights(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.ckpt"
    uninterrupted = Fleet(3, config())
    uninterrupted.start()
    assert uninterrupted.rounds.phase is Phase.DONE

    fleet = Fleet(3, config(), checkpoint_path=path)
    fleet.on_action = crash_after_checkpoint(2)
    fleet.start()
    assert not fleet.coordinator_up and fleet.rounds.completed_rounds == 2
    fleet.now += 5.0  # the restart takes a while
    fleet.on_action = None

    fleet.restart_coordinator(resume=load_checkpoint(path))

    assert fleet.rounds.phase is Phase.DONE and fleet.rounds.completed_rounds == 5
    assert fleet.rounds.run == uninterrupted.rounds.run
    assert weights_equal(fleet.weights, uninterrupted.weights)
    assert [(m.round, m.accepted, m.samples, m.accuracy) for m in fleet.history] == [
        (m.round, m.accepted, m.samples, m.accuracy) for m in uninterrupted.history
    ]
    for agent in fleet.agent_ids:  # nothing was trained twice
        assert fleet.trains_of(agent) == uninterrupted.trains_of(agent)
    assert load_checkpoint(path).round == 5


def test_coordinator_crash_mid_round_resumes_and_agents_resend_without_retraining(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.ckpt"
    uninterrupted = Fleet(3, config(rounds=3))
    uninterrupted.start()

    fleet = Fleet(3, config(rounds=3), checkpoint_path=path)

    def hook(f: Fleet, action: Action) -> None:
        if isinstance(action, UpdateAccepted) and (action.round_no, action.accepted) == (2, 2):
            f.crash_coordinator()  # two agents answered round 2, the third update is lost

    fleet.on_action = hook
    fleet.start()
    assert not fleet.coordinator_up
    fleet.now += 5.0
    fleet.on_action = None

    fleet.restart_coordinator(resume=load_checkpoint(path))

    # round 2 is announced again; every agent re-sends its cached answer at once
    assert fleet.rounds.phase is Phase.DONE and fleet.now == 5.0
    closes = [m for m in fleet.closed() if m.round == 2]
    assert [m.closed_by for m in closes] == [ClosedBy.QUORUM]
    assert weights_equal(fleet.weights, uninterrupted.weights)
    for agent in fleet.agent_ids:
        assert fleet.trains_of(agent) == uninterrupted.trains_of(agent)
