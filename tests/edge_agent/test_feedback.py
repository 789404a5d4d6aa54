"""Error feedback: the residual store, its file, and how the agent core applies it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.agent import (
    AgentCore,
    ModelArrived,
    SaveResidual,
    Train,
    TrainingDone,
    UpdateSent,
)
from edge_agent.feedback import ErrorFeedback, Residual, load_residual, save_residual
from edge_agent.trainer import TrainResult
from protocol import (
    ModelAnnouncement,
    Publish,
    TrainPlan,
    Weights,
    decode_delta,
    decode_model,
    decode_update,
    encode_delta,
    encode_model,
    weights_digest,
)
from tests.helpers import LinearTrainer, initial_weights

SHAPES = {"w": (8, 5), "b": (5,)}
#: biased codecs: the ones error feedback applies to
BIASED = ["fp16", "int8", "int8:block=4", "topk:0.1", "topk:0.2+int8", "topk:0.1+qsgd:4+zstd"]


def delta_at(seed: int, scale: float = 1.0) -> Weights:
    rng = np.random.default_rng([seed, 99])
    return {n: rng.normal(0, scale, size=s).astype(np.float32) for n, s in SHAPES.items()}


def sent(entries: list[dict[str, Any]], spec: str) -> Weights:
    return decode_delta(entries, spec, SHAPES)


# --- the residual store -------------------------------------------------------------------------


finite = st.floats(-100, 100, width=32)
delta_sequences = st.lists(
    st.fixed_dictionaries(
        {n: hnp.arrays("<f4", s, elements=finite) for n, s in SHAPES.items()}
    ).map(lambda d: {n: d[n] for n in SHAPES}),  # in model order
    min_size=1,
    max_size=6,
)


@settings(deadline=None, max_examples=300)
@given(spec=st.sampled_from(BIASED), deltas=delta_sequences, seed=st.integers(0, 2**16))
def test_sent_plus_residual_equals_the_sum_of_true_deltas(
    spec: str, deltas: list[Weights], seed: int
) -> None:
    fb = ErrorFeedback()
    rng = np.random.default_rng(seed)
    total_sent = {n: np.zeros(s) for n, s in SHAPES.items()}
    for delta in deltas:
        decoded = sent(fb.encode(delta, spec, scope="run", rng=rng), spec)
        for n in SHAPES:
            total_sent[n] += decoded[n]
    assert fb.state is not None and fb.state.scope == "run"
    # Exact in real arithmetic; here each round rounds u = delta + residual and u - sent to
    # float32 (relative 2**-24 each), and |u| in round t is at most the peaks summed so far.
    peaks = np.cumsum([max(float(np.abs(d[n]).max()) for n in SHAPES) for d in deltas])
    tolerance = 2 * 2.0**-24 * float(peaks.sum())
    for n in SHAPES:
        truth = sum(d[n].astype(np.float64) for d in deltas)
        np.testing.assert_allclose(
            total_sent[n] + fb.state.tensors[n], truth, rtol=0, atol=tolerance
        )


def test_topk_residual_is_what_was_not_sent_and_joins_the_next_delta() -> None:
    fb = ErrorFeedback()
    d1, d2 = delta_at(1), delta_at(2)
    first = sent(fb.encode(d1, "topk:0.1", scope="r"), "topk:0.1")
    assert fb.state is not None
    r1 = fb.state.tensors
    for n in SHAPES:
        np.testing.assert_array_equal(first[n] + r1[n], d1[n])  # exact under float32 top-k
        assert ((first[n] == 0) | (r1[n] == 0)).all()  # each value is either sent or kept
    second = sent(fb.encode(d2, "topk:0.1", scope="r"), "topk:0.1")
    plain = sent(ErrorFeedback().encode(d2, "topk:0.1", scope="r"), "topk:0.1")
    assert any(not np.array_equal(second[n], plain[n]) for n in SHAPES)


def test_lossless_codec_sends_the_residual_in_full_and_keeps_none() -> None:
    fb = ErrorFeedback()
    d1, d2 = delta_at(1), delta_at(2)
    fb.encode(d1, "topk:0.1+int8", scope="r")
    residual = fb.state
    assert residual is not None
    got = sent(fb.encode(d2, "zstd", scope="r"), "zstd")
    assert fb.state is None
    for n in SHAPES:
        np.testing.assert_array_equal(got[n], d2[n] + residual.tensors[n])


@pytest.mark.parametrize("spec", ["qsgd:4", "qsgd:1,block=8+zstd"])
def test_unbiased_codec_sends_the_residual_and_keeps_none(spec: str) -> None:
    fb = ErrorFeedback()
    d1, d2 = delta_at(1), delta_at(2)
    fb.encode(d1, "topk:0.1", scope="r")
    residual = fb.state
    assert residual is not None
    entries = fb.encode(d2, spec, scope="r", rng=np.random.default_rng(4))
    assert fb.state is None
    carried = {n: d2[n] + residual.tensors[n] for n in SHAPES}
    assert entries == encode_delta(carried, spec, np.random.default_rng(4))
    assert ErrorFeedback().encode(d2, spec, scope="r", rng=np.random.default_rng(4)) == (
        encode_delta(d2, spec, np.random.default_rng(4))
    )


def test_lossless_codec_without_a_residual_keeps_state_untouched() -> None:
    fb = ErrorFeedback()
    got = sent(fb.encode(delta_at(1), "none", scope="r"), "none")
    assert fb.state is None
    assert all(np.array_equal(got[n], delta_at(1)[n]) for n in SHAPES)


@pytest.mark.parametrize(
    ("scope", "delta"),
    [
        ("another-run", delta_at(2)),
        ("r", {"w": delta_at(2)["w"]}),
        ("r", {"w": delta_at(2)["w"].T.copy(), "b": delta_at(2)["b"]}),
        ("r", {"b": delta_at(2)["b"], "w": delta_at(2)["w"]}),
    ],
    ids=["new-run", "missing-tensor", "new-shape", "new-order"],
)
def test_residual_of_another_run_or_model_is_not_carried(scope: str, delta: Weights) -> None:
    fb, fresh = ErrorFeedback(), ErrorFeedback()
    fb.encode(delta_at(1), "topk:0.1", scope="r")
    assert fb.encode(delta, "topk:0.1", scope=scope) == fresh.encode(delta, "topk:0.1", scope=scope)
    assert fb.state is not None and fresh.state is not None
    assert fb.state.scope == scope
    for n, a in fresh.state.tensors.items():
        np.testing.assert_array_equal(fb.state.tensors[n], a)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_delta_raises_and_leaves_the_residual(bad: float) -> None:
    fb = ErrorFeedback()
    fb.encode(delta_at(1), "int8", scope="r")
    before = fb.state
    delta = delta_at(2)
    delta["b"][0] = bad
    with pytest.raises(ValueError):
        fb.encode(delta, "int8", scope="r")
    assert fb.state is before


def test_bad_spec_raises_value_error() -> None:
    with pytest.raises(ValueError):
        ErrorFeedback().encode(delta_at(1), "topk:2", scope="r")


# --- the residual file --------------------------------------------------------------------------


def residual() -> Residual:
    fb = ErrorFeedback()
    fb.encode(delta_at(1), "topk:0.1+int8", scope="run-7")
    assert fb.state is not None
    return fb.state


def test_save_and_load_round_trip_bit_for_bit(tmp_path: Path) -> None:
    path = tmp_path / "agent-1" / "residual.msgpack"
    state = residual()
    save_residual(path, state)
    loaded = load_residual(path)
    assert loaded is not None and loaded.scope == "run-7"
    assert list(loaded.tensors) == list(state.tensors)
    for n, a in state.tensors.items():
        assert loaded.tensors[n].dtype == np.float32
        assert loaded.tensors[n].tobytes() == a.tobytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["residual.msgpack"]  # no temp left


def test_file_is_plain_msgpack_with_wire_tensors(tmp_path: Path) -> None:
    path = tmp_path / "r.msgpack"
    save_residual(path, residual())
    doc = msgpack.unpackb(path.read_bytes(), raw=False)
    assert {k: doc[k] for k in ("v", "type", "scope")} == {
        "v": 1,
        "type": "residual",
        "scope": "run-7",
    }
    assert [(t["name"], t["dtype"], t["shape"]) for t in doc["tensors"]] == [
        ("w", "<f4", [8, 5]),
        ("b", "<f4", [5]),
    ]


def test_save_none_removes_the_file_and_load_of_nothing_is_none(tmp_path: Path) -> None:
    path = tmp_path / "r.msgpack"
    assert load_residual(path) is None
    save_residual(path, residual())
    save_residual(path, None)
    assert not path.exists()
    save_residual(path, None)  # idempotent


def test_a_loaded_residual_carries_over_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "r.msgpack"
    before = ErrorFeedback()
    before.encode(delta_at(1), "topk:0.1", scope="r")
    save_residual(path, before.state)
    after = ErrorFeedback(load_residual(path))
    d2 = delta_at(2)
    assert after.encode(d2, "topk:0.1", scope="r") == before.encode(d2, "topk:0.1", scope="r")


GOOD = msgpack.packb({"v": 1, "type": "residual", "scope": "r", "tensors": []})
CORRUPT_FILES = {
    "empty": b"",
    "garbage": b"\xc1\xc1\xc1",
    "truncated": None,  # filled in below from a real file
    "a-checkpoint": msgpack.packb({"v": 1, "type": "checkpoint"}),
    "version-2": msgpack.packb({"v": 2, "type": "residual", "scope": "r", "tensors": []}),
    "no-scope": msgpack.packb({"v": 1, "type": "residual", "tensors": []}),
    "no-tensors": GOOD,
    "nan-tensor": msgpack.packb(
        {
            "v": 1,
            "type": "residual",
            "scope": "r",
            "tensors": [
                {"name": "w", "dtype": "<f4", "shape": [1], "data": np.float32("nan").tobytes()}
            ],
        }
    ),
}


@pytest.mark.parametrize("case", list(CORRUPT_FILES))
def test_corrupt_file_is_a_value_error(tmp_path: Path, case: str) -> None:
    path = tmp_path / "r.msgpack"
    data = CORRUPT_FILES[case]
    if data is None:
        save_residual(path, residual())
        data = path.read_bytes()[:-7]
    path.write_bytes(data)
    with pytest.raises(ValueError):
        load_residual(path)


# --- the agent core ------------------------------------------------------------------------------

JOB, RUN = "job1", "run1"
W0 = initial_weights()


def announce(round_no: int, codec: str, *, attempt: int = 0, run: str = RUN) -> bytes:
    w = {n: (a + np.float32(round_no)).astype(np.float32) for n, a in W0.items()}
    return encode_model(
        ModelAnnouncement(
            job=JOB,
            run=run,
            round=round_no,
            attempt=attempt,
            model_id=weights_digest(w),
            task="linreg",
            plan=TrainPlan(epochs=1, batch_size=4, lr=0.1, seed=3),
            codec=codec,
            deadline_s=30.0,
            weights=w,
            issued_at=1000.0 + attempt,
        )
    )


def answer(core: AgentCore, payload: bytes, trainer: LinearTrainer | None = None) -> list[Any]:
    [train] = [a for a in core.handle(ModelArrived(payload)) if isinstance(a, Train)]
    trainer = trainer or LinearTrainer(index=1, samples=20)
    result = trainer.train(train.model.weights, train.model.plan, train.model.round)
    return core.handle(TrainingDone(train.key, result, 0.1))


def true_delta(payload: bytes) -> Weights:
    model = decode_model(payload)
    local = LinearTrainer(index=1, samples=20).train(model.weights, model.plan, model.round)
    return {n: local.weights[n] - model.weights[n] for n in model.weights}


def core(agent: str = "a1", feedback: ErrorFeedback | None = None) -> AgentCore:
    return AgentCore(JOB, agent, samples=20, trainer="numpy-linreg", feedback=feedback)


def test_lossy_round_publishes_then_asks_to_save_the_new_residual() -> None:
    spec, agent = "topk:0.25+int8", core()
    payload = announce(1, spec)
    actions = answer(agent, payload)
    assert [type(a) for a in actions] == [Publish, UpdateSent, SaveResidual]
    update = decode_update(actions[0].payload)
    state = actions[2].state
    assert isinstance(state, Residual) and state.scope == RUN
    shapes = {n: a.shape for n, a in W0.items()}
    got = decode_delta(update.tensors, spec, shapes)
    for n, d in true_delta(payload).items():
        np.testing.assert_allclose(got[n] + state.tensors[n], d, atol=1e-6)


def test_lossless_round_saves_nothing() -> None:
    actions = answer(core(), announce(1, "none"))
    assert [type(a) for a in actions] == [Publish, UpdateSent]


def test_resend_is_the_same_bytes_and_does_not_touch_the_residual() -> None:
    agent = core()
    first = answer(agent, announce(1, "topk:0.25+int8"))
    again = agent.handle(ModelArrived(announce(1, "topk:0.25+int8", attempt=1)))
    assert [type(a) for a in again] == [Publish, UpdateSent]
    assert again[0].payload == first[0].payload and again[1].resent


def test_the_residual_joins_the_next_round() -> None:
    spec = "topk:0.25"
    with_memory, without = core(), core()
    answer(with_memory, announce(1, spec))
    r2 = answer(with_memory, announce(2, spec))
    plain = answer(without, announce(2, spec))
    assert r2[0].payload != plain[0].payload


def test_a_loaded_residual_is_used_from_the_first_round() -> None:
    spec = "topk:0.25"
    donor = core()
    saved = answer(donor, announce(1, spec))[2].state
    restarted = core(feedback=ErrorFeedback(saved))
    assert (
        answer(restarted, announce(2, spec))[0].payload
        == answer(donor, announce(2, spec))[0].payload
    )


def test_stochastic_codec_is_reproducible_per_agent_and_independent_across_agents() -> None:
    spec = "qsgd:2"
    one = answer(core("a1"), announce(1, spec))[0].payload
    same = answer(core("a1"), announce(1, spec))[0].payload
    other = answer(core("a2"), announce(1, spec))[0].payload
    # compare the tensors only: each payload names its agent
    assert decode_update(one).tensors == decode_update(same).tensors
    assert decode_update(one).tensors != decode_update(other).tensors


def test_non_finite_training_result_declines_without_touching_the_residual() -> None:
    class Diverged(LinearTrainer):
        def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult:
            result = super().train(weights, plan, round_no)
            nan = {n: a * np.float32("nan") for n, a in result.weights.items()}
            return TrainResult(nan, result.samples, result.metrics)

    agent = core()
    answer(agent, announce(1, "int8"))
    actions = answer(agent, announce(2, "int8"), Diverged(index=1, samples=20))
    assert [type(a) for a in actions] == [Publish, UpdateSent]
    update = decode_update(actions[0].payload)
    assert update.declined is not None and "NaN" in update.declined
    assert update.tensors == ()


def test_without_a_zstd_binding_the_agent_declines_zstd_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from protocol.codecs import entropy

    def missing() -> None:
        raise ValueError("the zstd codec stage needs Python 3.14 or the 'backports.zstd' package")

    monkeypatch.setattr(entropy, "zstd_backend", missing)
    actions = answer(core(), announce(1, "topk:0.25+int8+zstd"))
    update = decode_update(actions[0].payload)
    assert update.declined is not None and "backports.zstd" in update.declined
    assert [type(a) for a in answer(core(), announce(1, "topk:0.25+int8"))][-1] is SaveResidual
