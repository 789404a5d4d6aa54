"""The live view renders what the state holds, frame by frame, into a recording console."""

from __future__ import annotations

from dataclasses import replace

from recorded import JOB, LATER, record_run
from rich.console import Console

from fedmq.monitor.state import MonitorState
from fedmq.monitor.view import render
from protocol import Phase, Topics, decode_status, encode_status


def frame(state: MonitorState, now: float, job: str | None = None) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(render(state, now, broker="mqtt://test:1883", connected=True, job=job))
    return console.export_text()


def test_a_finished_run_shows_its_rounds_agents_and_rejections() -> None:
    rec = record_run(rounds=3, agents=3)
    state = MonitorState()
    for topic, payload, retain in rec.messages:
        state.apply(topic, payload, retain, LATER)
    text = frame(state, LATER)
    assert f"job {JOB} · run run1 · done" in text
    assert "round    3/3" in text and "replies" not in text
    assert "agents   3 online, 0 offline   (coordinator counts 3 online)" in text
    assert f"accuracy {rec.accuracy[3]:.4f}" in text
    assert "rejected duplicate 1" in text
    cells = [line.strip("│ ").split() for line in text.splitlines()]
    rows = [c for c in cells if c and c[0] in ("1", "2", "3")]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", "quorum", "3"), ("2", "quorum", "3"),
                                                  ("3", "quorum", "3")]
    # the downlink per device and the compression both ways (docs/PROTOCOL.md §15.6)
    assert "down/agent" in text and "both ways" in text
    assert all(r[-1].replace(".", "").isdigit() and r[-2].startswith("x") for r in rows)


def test_an_open_round_shows_replies_toward_quorum_and_the_countdown() -> None:
    rec = record_run(rounds=2, agents=3)
    statuses = [decode_status(p) for p in rec.on("/status")]
    training = next(s for s in statuses if s.phase is Phase.TRAINING and s.accepted == 2)
    state = MonitorState()
    state.apply(Topics(JOB).status, encode_status(training), False, training.at)
    assert training.deadline_at is not None
    text = frame(state, training.deadline_at - 12.3)
    assert "training" in text and "2/3" in text and "deadline in 12.3 s" in text
    late = frame(state, training.deadline_at + 4)
    assert "deadline passed 4 s ago" in late
    retry = replace(training, attempt=1, at=training.at + 1)
    state.apply(Topics(JOB).status, encode_status(retry), False, training.at)
    assert "(retry 1)" in frame(state, training.at)


def test_malformed_counts_and_an_empty_broker_are_shown() -> None:
    state = MonitorState()
    assert "waiting for a job's retained status" in frame(state, 0.0)
    state.apply("fedmq/v1/x/status", b"garbage", False, 0.0)
    state.apply("not/fedmq", b"", False, 0.0)
    text = frame(state, 0.0)
    assert "malformed messages: status 1, topic 1" in text
