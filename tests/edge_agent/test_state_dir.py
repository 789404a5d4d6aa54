"""The agent's state directory: atomic files, torn writes ignored, corrupt files set aside."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgpack
import numpy as np
import pytest

from edge_agent.downlink import HeldModel
from edge_agent.feedback import Residual, save_residual
from edge_agent.state import MODEL_NAME, RESIDUAL_NAME, StateDir
from protocol import ModelAnnouncement, TrainPlan
from protocol.durable import atomic_write, stray_temporaries

WEIGHTS = {
    "0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "0.bias": np.array([0.5, -1.0], dtype=np.float32),
}


def announcement(round_no: int = 4, done: bool = False) -> ModelAnnouncement:
    return ModelAnnouncement(
        job="farm", run="r1", round=round_no, model_id=f"m{round_no}", task="linreg",
        deadline_s=30.0, plan=TrainPlan(epochs=1, batch_size=8, lr=0.1, seed=0),
        codec="none", weights=WEIGHTS, done=done,
    )


def test_the_last_global_model_round_trips(tmp_path: Path) -> None:
    state = StateDir(tmp_path, "pi-7")
    assert state.load_model() is None
    state.save_model("farm", HeldModel.of(announcement(4)))
    state.save_model("farm", HeldModel.of(announcement(5, done=True)))
    saved = StateDir(tmp_path, "pi-7").load_model()
    assert saved is not None
    assert (saved.job, saved.run, saved.round, saved.done) == ("farm", "r1", 5, True)
    for name, want in WEIGHTS.items():
        np.testing.assert_array_equal(saved.weights[name], want)
    assert sorted(p.name for p in state.path.iterdir()) == [MODEL_NAME]


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file.bin"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert stray_temporaries(path) == []


def test_a_torn_temporary_is_ignored_and_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A power cut during a write leaves the old file whole and a partial temporary.
    state = StateDir(tmp_path, "pi-7")
    state.save_model("farm", HeldModel.of(announcement(4)))
    whole = (state.path / MODEL_NAME).read_bytes()
    torn = state.path / f".{MODEL_NAME}.k3j2h1"
    torn.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level(logging.INFO, logger="fedmq.agent.state"):
        again = StateDir(tmp_path, "pi-7")
    assert not torn.exists() and "interrupted" in caplog.text
    saved = again.load_model()
    assert saved is not None and saved.round == 4


@pytest.mark.parametrize(
    "content",
    [
        b"",  # truncated to nothing (a file system without data=ordered)
        b"\x93\x01\x02",  # some other msgpack
        msgpack.packb({"v": 99, "type": "global-model"}),  # a newer version
        msgpack.packb({"v": 1, "type": "global-model", "job": "farm", "run": "r1",
                       "round": 2, "done": False, "tensors": [{"name": "w"}]}),
    ],
)
def test_a_corrupt_model_is_set_aside_with_a_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    state = StateDir(tmp_path, "pi-7")
    (state.path / MODEL_NAME).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="fedmq.agent.state"):
        assert state.load_model() is None
    assert f"ignoring {state.path / MODEL_NAME}" in caplog.text
    assert (state.path / f"{MODEL_NAME}.corrupt").read_bytes() == content
    assert not (state.path / MODEL_NAME).exists()
    state.save_model("farm", HeldModel.of(announcement(6)))  # and the agent carries on saving
    saved = state.load_model()
    assert saved is not None and saved.round == 6


def test_residuals_load_and_a_corrupt_one_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = StateDir(tmp_path, "pi-7")
    save_residual(state.path / RESIDUAL_NAME, Residual("r1", WEIGHTS))
    loaded = state.load_residual()
    assert loaded is not None and loaded.scope == "r1"
    np.testing.assert_array_equal(loaded.tensors["0.weight"], WEIGHTS["0.weight"])
    (state.path / RESIDUAL_NAME).write_bytes(b"\xc1garbage")
    with caplog.at_level(logging.WARNING, logger="fedmq.agent.state"):
        assert state.load_residual() is None
    assert "unreadable residual" in caplog.text
    assert (state.path / f"{RESIDUAL_NAME}.corrupt").exists()


def test_files_are_private_to_the_agent_user(tmp_path: Path) -> None:
    state = StateDir(tmp_path, "pi-7")
    state.save_model("farm", HeldModel.of(announcement()))
    # mkstemp creates 0600 files; os.replace keeps the mode
    assert os.stat(state.path / MODEL_NAME).st_mode & 0o077 == 0


def test_a_restarted_agent_starts_from_its_saved_model_and_residual(tmp_path: Path) -> None:
    from fedmq.launch import AgentSettings, Connection, build_agent
    from transport.connection import BrokerURL

    state = StateDir(tmp_path, "pi-7")
    state.save_model("farm", HeldModel.of(announcement(4)))
    save_residual(state.path / RESIDUAL_NAME, Residual("r1", WEIGHTS))
    (state.path / f".{RESIDUAL_NAME}.torn").write_bytes(b"\x00" * 10)
    settings = AgentSettings(job="farm", task="linreg", agent_id="pi-7", shard=0, num_shards=4,
                             trainer="numpy", state_dir=tmp_path)
    # built, not run: nothing connects to this address
    node = build_agent(settings, Connection(BrokerURL.parse("mqtt://127.0.0.1:9")))
    assert node.saved_model is not None and node.saved_model.round == 4
    np.testing.assert_array_equal(node.saved_model.weights["0.bias"], WEIGHTS["0.bias"])
    assert node.core.residual is not None and node.core.residual.scope == "r1"
    assert stray_temporaries(state.path / RESIDUAL_NAME) == []
