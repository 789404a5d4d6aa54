"""The browser's trainer gives the update the Python numpy trainer gives, for the same
weights, plan, round, agent index and rows, to float32 tolerance.

web/src/train/mlp.js runs under node (the same module the browser's Worker loads);
edge_agent/numpy_trainer.py runs here. The shuffles must agree exactly (numpy's
``default_rng([seed, round, index]).permutation(n)``, reimplemented in
web/src/train/rng.js), or the weights would differ by far more than rounding.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from edge_agent.numpy_trainer import NumpyTrainer
from fedmq.tasks import DataConfig, agent_data, get_task
from protocol import TrainPlan
from tests.needs import require_mnist, require_node_modules

HERE = Path(__file__).resolve().parent
#: max |js - numpy| over every weight, after a round: float32 rounding, summed over steps
TOLERANCE = 2e-6


def initial(task: str, seed: int) -> dict[str, np.ndarray]:
    """A seeded init with torch's default distribution (no torch needed)."""
    t = get_task(task)
    x = np.zeros((1, t.model.sizes[0]), np.float32)
    y = np.zeros(1, np.int64) if t.kind == "classification" else np.zeros(1, np.float32)
    return NumpyTrainer(t.model, t.kind, x, y, 0).initial_weights(seed)


def case(
    task: str, x: Any, y: Any, index: int, *, round_no: int, plan: TrainPlan
) -> dict[str, Any]:
    t = get_task(task)
    weights = initial(task, 7)
    result = NumpyTrainer(t.model, t.kind, x, y, index).train(weights, plan, round_no)
    labels = t.kind == "classification"
    return {
        "doc": {
            "spec": {"arch": t.model.arch, "sizes": list(t.model.sizes)}, "kind": t.kind,
            "x": np.ascontiguousarray(x, "<f4").tobytes(),
            "y": np.ascontiguousarray(y, "<i4" if labels else "<f4").tobytes(),
            "index": index, "round": round_no,
            "plan": {"epochs": plan.epochs, "batch_size": plan.batch_size, "lr": plan.lr,
                     "seed": plan.seed, "options": dict(plan.options)},
            "weights": {k: v.astype("<f4").tobytes() for k, v in weights.items()},
        },
        "weights": weights,
        "expect": result,
    }


def run_js(tmp_path: Path, cases: list[dict[str, Any]],
           permutations: list[dict[str, Any]]) -> dict[str, Any]:
    web = require_node_modules()
    src, dst = tmp_path / "in.msgpack", tmp_path / "out.msgpack"
    src.write_bytes(msgpack.packb({"cases": [c["doc"] for c in cases],
                                   "permutations": permutations}))
    subprocess.run(["node", str(HERE / "train_parity.mjs"), str(src), str(dst)], check=True,
                   env={**os.environ, "FEDMQ_WEB_DIR": str(web)}, timeout=300)
    out: dict[str, Any] = msgpack.unpackb(dst.read_bytes())
    return out


def check(c: dict[str, Any], got: dict[str, Any]) -> None:
    expect = c["expect"]
    assert got["samples"] == expect.samples
    for name, want in expect.weights.items():
        js = np.frombuffer(got["weights"][name], "<f4").reshape(want.shape)
        moved = np.abs(want - c["weights"][name]).max()
        assert moved > 100 * TOLERANCE, f"{name} hardly moved: the check would prove nothing"
        np.testing.assert_allclose(js, want, rtol=0, atol=TOLERANCE, err_msg=name)
    for key, value in expect.metrics.items():
        assert got["metrics"][key] == pytest.approx(value, rel=1e-5), key


def test_digits_linreg_and_fedprox_updates_match_numpy(tmp_path: Path) -> None:
    data = DataConfig()
    digits_x, digits_y = agent_data(get_task("digits"), data, 3, 10)
    lin_x, lin_y = agent_data(get_task("linreg"), data, 1, 4)
    plan = get_task("digits").plan
    fedprox = TrainPlan(2, 7, 0.1, 11, {"mu": 0.01})  # odd batch size: a short last batch
    cases = [
        case("digits", digits_x, digits_y, 3, round_no=2, plan=plan),
        case("digits", digits_x, digits_y, 3, round_no=5, plan=fedprox),
        case("linreg", lin_x, lin_y, 1, round_no=1, plan=get_task("linreg").plan),
    ]
    seeds = [{"seed": [0, 1, 3], "sizes": [500, 500]}, {"seed": 12345, "sizes": [7, 1, 0, 1000]},
             {"seed": [2**40 + 5, 2**32 - 1, 0, 9, 9], "sizes": [65536]}]
    out = run_js(tmp_path, cases, seeds)
    for c, got in zip(cases, out["cases"], strict=True):
        check(c, got)
    for spec, got in zip(seeds, out["permutations"], strict=True):
        rng = np.random.default_rng(spec["seed"])
        assert got == [rng.permutation(n).tolist() for n in spec["sizes"]]


@pytest.mark.slow
def test_mnist_logreg_and_2nn_updates_match_numpy_on_a_w1_shard(tmp_path: Path) -> None:
    data = DataConfig(data_dir=require_mnist())
    x, y = agent_data(get_task("mnist-2nn"), data, 4, 20)  # W1: 500 rows
    assert len(x) == 500
    cases = [case(task, x, y, 4, round_no=1, plan=get_task(task).plan)
             for task in ("mnist-logreg", "mnist-2nn")]
    for c, got in zip(cases, run_js(tmp_path, cases, [])["cases"], strict=True):
        check(c, got)
