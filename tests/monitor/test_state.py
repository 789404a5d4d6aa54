"""The monitor's state model, fed recorded messages: in order, retained, duplicated,
shuffled, and broken. It must build the right view and never raise."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recorded import JOB, LATER, RUN, WALL_OFFSET, Recording, presence_payload, record_run

from fedmq.monitor import (
    AgentChanged,
    Malformed,
    ModelSeen,
    MonitorEvent,
    MonitorState,
    RoundSeen,
    RunFinished,
    StatusChanged,
    peek_model_header,
    to_json,
)
from protocol import (
    ClosedBy,
    ModelAnnouncement,
    Phase,
    RejectReason,
    Status,
    Topics,
    TrainPlan,
    WireError,
    decode_metrics,
    decode_status,
    encode_model,
    encode_status,
)
from protocol.keys import SigningKey
from protocol.signing import Purpose, seal

T = Topics(JOB)


def replay(state: MonitorState, messages: list[tuple[str, bytes, bool]]) -> list[MonitorEvent]:
    events: list[MonitorEvent] = []
    for topic, payload, retain in messages:
        events.extend(state.apply(topic, payload, retain, LATER))
    return events


@pytest.fixture(scope="module")
def recording() -> Recording:
    return record_run(rounds=3, agents=3)


def test_a_recorded_run_builds_the_jobs_view(recording: Recording) -> None:
    state = MonitorState()
    events = replay(state, recording.messages)
    view = state.jobs[JOB]
    assert view.status is not None and view.status.phase is Phase.DONE
    assert (view.status.round, view.status.rounds, view.run) == (3, 3, RUN)
    rounds = [e.metrics for e in events if isinstance(e, RoundSeen)]
    assert [m.round for m in rounds] == [1, 2, 3]
    assert all(m.accepted == 3 and m.closed_by is ClosedBy.QUORUM for m in rounds)
    assert [m.accuracy for m in rounds] == [recording.accuracy[r] for r in (1, 2, 3)]
    assert rounds[1].rejected == {"duplicate": 1} and not rounds[0].rejected
    assert view.status.rejected == {"duplicate": 1}
    assert [m.round for m in view.recent_rounds(2)] == [2, 3]
    last = view.last_evaluated()
    assert last is not None and last.round == 3 and last.accuracy == recording.accuracy[3]
    assert view.agent_counts() == (3, 0)
    assert [(e.run, e.phase) for e in events if isinstance(e, RunFinished)] == [(RUN, Phase.DONE)]
    # Every status publish is one event; the monitor never follows updates.
    assert sum(isinstance(e, StatusChanged) for e in events) == len(recording.on("/status"))
    assert state.ignored["update"] == 9
    assert not state.malformed
    model = view.model
    assert model is not None and model.done and model.round == 3 and model.task == "toy"


def test_retained_state_alone_shows_the_job_at_once(recording: Recording) -> None:
    state = MonitorState()
    events = replay(state, recording.retained())
    view = state.jobs[JOB]
    assert view.status is not None and view.status.phase is Phase.DONE
    # Only the last metrics are retained: the monitor knows round 3, not 1 and 2.
    assert [m.round for m in view.recent_rounds(10)] == [3]
    assert view.agent_counts() == (3, 0)
    assert events and all(getattr(e, "retained", True) for e in events)
    assert any(isinstance(e, RunFinished) and e.retained for e in events)


def test_duplicates_and_a_restarted_coordinators_republish_count_once(
    recording: Recording,
) -> None:
    state = MonitorState()
    replay(state, recording.messages)
    before = copy.deepcopy(state.jobs[JOB])
    # QoS 1 redelivers everything; a restarted coordinator republishes its last metrics retained.
    again = replay(state, recording.messages + recording.retained())
    view = state.jobs[JOB]
    assert not [e for e in again if isinstance(e, RoundSeen | RunFinished | AgentChanged)]
    assert view.rounds == before.rounds and view.status == before.status
    assert view.ignored["duplicate_metrics"] == 3 + 1
    assert view.ignored["duplicate_agents"] == 3 + 3


def test_shuffled_delivery_ends_in_the_same_view(recording: Recording) -> None:
    offline_at = WALL_OFFSET + 50.0
    messages = [*recording.messages, (T.presence("agent-1"), presence_payload("agent-1", False,
                                                                             offline_at), True)]
    ordered = MonitorState()
    replay(ordered, messages)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(messages))
        shuffled = MonitorState()
        events = replay(shuffled, [messages[i] for i in order])
        a, b = ordered.jobs[JOB], shuffled.jobs[JOB]
        assert b.status == a.status and b.status is not None and b.status.phase is Phase.DONE
        assert [m.round for m in b.recent_rounds(10)] == [1, 2, 3]
        assert b.agents == a.agents and b.agent_counts() == (2, 1)
        assert sum(isinstance(e, RunFinished) for e in events) == 1
        assert not shuffled.malformed


def test_an_older_status_of_the_same_run_is_stale() -> None:
    state = MonitorState()
    statuses = [decode_status(p) for p in record_run(rounds=1, agents=1).on("/status")]
    newest, older = statuses[-1], statuses[0]
    assert older.at < newest.at
    state.apply(T.status, encode_status(newest), False, LATER)
    assert state.apply(T.status, encode_status(older), False, LATER) == []
    view = state.jobs[JOB]
    assert view.status == newest and view.ignored["stale_status"] == 1


def test_a_last_will_without_time_still_takes_an_agent_offline() -> None:
    state = MonitorState()
    state.apply(T.presence("a"), presence_payload("a", True, WALL_OFFSET + 5), True, LATER)
    (event,) = state.apply(T.presence("a"), presence_payload("a", False, 0.0), False, LATER)
    assert isinstance(event, AgentChanged) and event.agent_view is not None
    assert not event.agent_view.online
    assert state.jobs[JOB].agent_counts() == (0, 1)
    # A cleared retained presence removes the agent.
    (cleared,) = state.apply(T.presence("a"), b"", False, LATER)
    assert isinstance(cleared, AgentChanged) and cleared.agent_view is None
    assert state.jobs[JOB].agents == {}


def test_a_signed_presence_is_read_like_a_bare_one() -> None:
    """The secure profile's agents sign their presence; the monitor shows it unverified."""
    key = SigningKey.from_seed(b"1" * 32)
    signed = seal(presence_payload("a", True, WALL_OFFSET + 5), Purpose.PRESENCE, job=JOB,
                  run="s1", signer="a", key=key)
    (event,) = MonitorState().apply(T.presence("a"), signed, True, LATER)
    assert isinstance(event, AgentChanged) and event.agent_view is not None
    assert event.agent_view.online


def test_a_new_run_of_the_job_replaces_the_old_rounds_in_view() -> None:
    state = MonitorState()
    replay(state, record_run(rounds=2, agents=2, run="old").messages)
    replay(state, record_run(rounds=1, agents=2, run="new").messages)
    view = state.jobs[JOB]
    assert view.run == "new"
    assert [(m.run, m.round) for m in view.recent_rounds(10)] == [("new", 1)]
    assert len(view.rounds) == 3  # the old run's rounds are kept, just not shown


def test_deadline_countdown_uses_the_statuss_wall_clock_deadline() -> None:
    state = MonitorState()
    status = Status(job=JOB, run=RUN, phase=Phase.TRAINING, round=1, rounds=3, attempt=0,
                    accepted=1, quorum=4, min_replies=1, cohort_size=4, agents_online=4,
                    deadline_at=1000.0, rejected={}, at=970.0)
    state.apply(T.status, encode_status(status), False, 975.0)
    view = state.jobs[JOB]
    assert view.deadline_in(982.5) == pytest.approx(17.5)
    assert view.deadline_in(1003.0) == pytest.approx(-3.0)
    evaluating = replace(status, phase=Phase.EVALUATING, deadline_at=None, at=985.0)
    state.apply(T.status, encode_status(evaluating), False, 985.0)
    assert view.deadline_in(986.0) is None


# --- models: read the header, skip the tensors ----------------------------------------------


def model_payload(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "job": JOB, "run": RUN, "round": 4, "model_id": "m", "task": "toy", "plan": TrainPlan(),
        "codec": "none", "deadline_s": 30.0, "attempt": 1, "issued_at": 5.0,
        "weights": {"w": np.ones((256, 256), np.float32)},
    }
    fields.update(overrides)
    return encode_model(ModelAnnouncement(**fields))  # type: ignore[arg-type]


def test_model_header_is_read_without_the_tensors() -> None:
    payload = model_payload()
    header = peek_model_header(payload)
    assert header == {"job": JOB, "run": RUN, "round": 4, "attempt": 1, "done": False,
                      "task": "toy", "codec": "none", "deadline_s": 30.0, "issued_at": 5.0}
    # Tensors that would not decode do not matter: they are skipped, not parsed.
    doc = msgpack.unpackb(payload, raw=False)
    doc["tensors"] = [{"name": "w", "dtype": "complex1024", "shape": [-1], "data": b"x"}]
    assert peek_model_header(msgpack.packb(doc, use_bin_type=True))["round"] == 4
    state = MonitorState()
    (event,) = state.apply(T.model, payload, True, LATER)
    assert isinstance(event, ModelSeen) and event.header.size_bytes == len(payload)
    assert state.apply(T.model, payload, False, LATER) == []  # same round and attempt


# --- malformed input: counted per topic kind, never raised, nothing else changes ----------


def _status_doc(**overrides: object) -> bytes:
    doc = json.loads(record_run(rounds=1, agents=1).on("/status")[-1])
    doc.update(overrides)
    return json.dumps(doc).encode()


BAD = [
    ("fedmq/v1/watch/status", b"\xff\xfe not json", "status", RejectReason.MALFORMED),
    ("fedmq/v1/watch/status", _status_doc(v=2), "status", RejectReason.BAD_VERSION),
    ("fedmq/v1/watch/status", _status_doc(job="other"), "status", RejectReason.WRONG_JOB),
    ("fedmq/v1/watch/status", _status_doc(phase="exploding"), "status", RejectReason.MALFORMED),
    ("fedmq/v1/watch/status", _status_doc(accepted=-1), "status", RejectReason.MALFORMED),
    ("fedmq/v1/watch/metrics", b'{"v":1,"type":"metrics","job":"watch","run":"r","round":1,'
     b'"closed_by":"quorum","accepted":1,"declined":0,"rejected":{},"samples":1,'
     b'"duration_s":NaN,"bytes_up":0,"bytes_down":0,"raw_bytes_up":0}', "metrics",
     RejectReason.NON_FINITE),
    ("fedmq/v1/watch/metrics", b"[]", "metrics", RejectReason.MALFORMED),
    ("fedmq/v1/watch/agents/a", presence_payload("b", True, 1.0), "agents",
     RejectReason.AGENT_MISMATCH),
    ("fedmq/v1/watch/agents/a", b'{"v":1,"type":"presence","agent":"a","state":"asleep"}',
     "agents", RejectReason.MALFORMED),
    ("fedmq/v1/watch/model", b"\x93\x01\x02", "model", RejectReason.MALFORMED),
    ("fedmq/v1/watch/model", model_payload()[:40], "model", RejectReason.MALFORMED),
    ("fedmq/v1/watch/model", msgpack.packb({"v": 9, "type": "model"}), "model",
     RejectReason.BAD_VERSION),
    ("fedmq/v1/watch/model", msgpack.packb({"v": 1, "type": "model", "job": "watch",
                                            "round": "four"}), "model", RejectReason.MALFORMED),
    ("fedmq/v1/other/model", model_payload(), "model", RejectReason.WRONG_JOB),
    ("fedmq/v2/watch/status", b"{}", "topic", RejectReason.MALFORMED),
    ("fedmq/v1/wa+tch/status", b"{}", "topic", RejectReason.MALFORMED),
    ("fedmq/v1/watch/agents", b"{}", "topic", RejectReason.MALFORMED),
]


@pytest.mark.parametrize(("topic", "payload", "kind", "reason"), BAD)
def test_bad_message_is_counted_by_kind_and_changes_nothing(
    recording: Recording, topic: str, payload: bytes, kind: str, reason: RejectReason
) -> None:
    state = MonitorState()
    replay(state, recording.messages)
    before = copy.deepcopy(state.jobs)
    (event,) = state.apply(topic, payload, False, LATER)
    assert isinstance(event, Malformed)
    assert (event.kind, event.reason, event.topic) == (kind, reason, topic)
    assert state.malformed == {kind: 1}
    assert state.jobs == before
    json.dumps(to_json(event, LATER), allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["status", "metrics", "model", "agents/a-1", "update/a-1", "x"]),
    job=st.sampled_from(["watch", "+", ""]),
    payload=st.binary(max_size=200) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["v", "type", "job", "run", "round", "phase", "agent", "state", "at"]),
        st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5), st.booleans()),
    )),
    retained=st.booleans(),
)
def test_apply_never_raises_on_arbitrary_input(
    kind: str, job: str, payload: bytes, retained: bool
) -> None:
    state = MonitorState()
    for event in state.apply(f"fedmq/v1/{job}/{kind}", payload, retained, LATER):
        json.dumps(to_json(event, LATER))
    assert state.messages == 1


def test_every_event_of_a_run_has_a_json_form(recording: Recording) -> None:
    state = MonitorState()
    events = replay(state, recording.messages)
    docs = [json.loads(json.dumps(to_json(e, LATER), allow_nan=False)) for e in events]
    kinds = {d["event"] for d in docs}
    assert kinds == {"status", "round", "presence", "model", "finished"}
    rounds = [d for d in docs if d["event"] == "round"]
    assert [decode_metrics(p).round for p in recording.on("/metrics")] == [
        d["round"] for d in rounds
    ]
    assert all(d["job"] == JOB and d["seen_at"] == LATER for d in docs)


def test_wire_error_is_the_only_failure_the_peek_reports() -> None:
    for payload in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({1: 2})):
        with pytest.raises(WireError):
            peek_model_header(payload)
