"""Task lookup, specs, built-in data and the per-agent slices the CLI hands out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedmq.tasks import (
    TASKS,
    DataConfig,
    Dataset,
    ModelSpec,
    Task,
    agent_data,
    get_task,
    load_dataset,
    locate,
    test_data,
)
from fedmq.tasks.datasets import load_blobs, load_digits, load_linreg
from fedmq.tasks.spec import check_dataset
from protocol import TrainPlan

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "custom_task.py"
CFG = DataConfig()


def make_task() -> Task:
    """A zero-argument callable returning a task: the other form get_task accepts."""
    return Task("made", ModelSpec("linear", (10, 10)), "classification", TrainPlan(), load_blobs)


NOT_A_TASK = 42


def test_builtin_names() -> None:
    assert TASKS == (
        "digits", "mlp", "linreg", "mnist-logreg", "mnist-2nn", "mnist-cnn", "mnist-2nn-per"
    )
    for name in TASKS:
        assert get_task(name).name == name


def test_mnist_2nn_is_w1() -> None:
    task = get_task("mnist-2nn")
    assert task.model == ModelSpec("mlp", (784, 200, 200, 10))
    assert task.plan == TrainPlan(epochs=1, batch_size=32, lr=0.05, seed=0)
    assert task.kind == "classification" and task.partition == "iid"


def test_mnist_2nn_per_is_w1_noniid_with_a_personal_head() -> None:
    task, w1 = get_task("mnist-2nn-per"), get_task("mnist-2nn")
    assert task.model == w1.model and task.partition == "shards"
    assert task.plan == TrainPlan(1, 32, 0.05, 0, options={"local_layers": "4.weight,4.bias"})


def test_unknown_task_lists_builtins() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'mnist'.*digits, mlp") as info:
        get_task("mnist")
    assert "path/to/file.py:TASK" in str(info.value)


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("no_such_module_xyz:TASK", "cannot import module 'no_such_module_xyz'"),
        ("fedmq.tasks:NO_SUCH", "has no attribute 'NO_SUCH'"),
        (f"{__file__}:NOT_A_TASK", "is a int, not a fedmq.tasks.Task"),
        (f"{REPO}/no_such_file.py:TASK", "no such file"),
        (":TASK", "expected 'package.module:name'"),
    ],
)
def test_bad_task_references(ref: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_task(ref)


def test_task_from_module_path_and_callable() -> None:
    # docs/ is a namespace package under the repo root, which pytest puts on sys.path
    assert get_task("docs.examples.custom_task:TASK").name == "moons"
    assert get_task(f"{__file__}:make_task").name == "made"


def test_custom_example_loads_by_file_path_and_trains() -> None:
    from edge_agent.torch_trainer import TorchTrainer, initial_weights

    task = get_task(f"{EXAMPLE}:TASK")
    assert task is get_task(f"{EXAMPLE}:TASK")  # the file is imported once
    assert task.name == "moons" and task.model.arch == "custom"
    x, y = agent_data(task, CFG, 0, 4)
    assert x.shape == (500, 2) and y.dtype == np.int64
    assert callable(locate(task.model.factory or ""))
    trainer = TorchTrainer(task.model, task.kind, x, y, 0)
    weights = initial_weights(task.model, 0)
    assert list(weights) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    before = trainer.evaluate(weights)["loss"]
    result = trainer.train(weights, task.plan, 1)
    assert trainer.evaluate(result.weights)["loss"] < before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "rnn"}, "unknown model arch 'rnn'"),
        ({"arch": "mlp", "sizes": (10,)}, "at least"),
        ({"arch": "linear", "sizes": (10, 5, 2)}, r"sizes \(in, out\)"),
        ({"arch": "mlp", "sizes": (10, 0)}, "positive ints"),
        ({"arch": "cnn", "sizes": (784, 10)}, "leave sizes empty"),
        ({"arch": "custom"}, "factory is required"),
        ({"arch": "mlp", "sizes": (2, 2), "factory": "m:f"}, "only allowed"),
        ({"arch": "custom", "factory": "no_colon"}, "module:callable"),
    ],
)
def test_bad_model_spec(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelSpec(**kwargs)  # type: ignore[arg-type]


def test_dataset_validates_and_freezes() -> None:
    x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    data = Dataset(x, y, x[:2].copy(), y[:2].copy())
    with pytest.raises(ValueError, match="read-only"):
        data.x_train[0, 0] = 1.0
    with pytest.raises(ValueError, match="float32"):
        Dataset(x.astype(np.float64), y, x, y)
    with pytest.raises(ValueError, match="4 inputs but 3 targets"):
        Dataset(np.zeros((4, 3), np.float32), y[:3].copy(), x, y)
    with pytest.raises(ValueError, match="train has 3 features, test 2"):
        Dataset(np.zeros((4, 3), np.float32), y, np.zeros((4, 2), np.float32), y)


def test_check_dataset_matches_kind() -> None:
    regression = load_linreg(CFG)
    with pytest.raises(ValueError, match="task 'digits' \\(classification\\): y_train is float32"):
        check_dataset(get_task("digits"), regression)


def test_loaders_are_seeded() -> None:
    for load in (load_digits, load_blobs, load_linreg):
        a, b, c = load(DataConfig(seed=0)), load(DataConfig(seed=0)), load(DataConfig(seed=1))
        assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
        assert not np.array_equal(a.x_train, c.x_train)


def test_digits_shapes_and_scale() -> None:
    data = load_digits(CFG)
    assert data.x_train.shape == (1438, 64) and data.x_test.shape == (359, 64)
    assert float(data.x_train.max()) == 1.0 and float(data.x_train.min()) == 0.0
    assert sorted(np.unique(data.y_train).tolist()) == list(range(10))


def test_agent_data_partitions_the_training_set() -> None:
    task = get_task("digits")
    full = load_dataset(task, CFG)
    for partition in ("iid", "shards", "dirichlet:0.5"):
        parts = [agent_data(task, CFG, k, 10, partition) for k in range(10)]
        xs = np.concatenate([x for x, _ in parts])
        assert len(xs) == len(full.x_train)
        # the shards together hold every training row exactly once
        both = np.concatenate([full.x_train, xs])
        assert len(np.unique(both, axis=0)) == len(np.unique(full.x_train, axis=0))
    x, _ = agent_data(task, CFG, 0, 10)
    x[0, 0] = 5.0  # a fresh, writable copy: the cached dataset is untouched
    assert float(load_dataset(task, CFG).x_train.max()) == 1.0


def test_agent_data_bad_partition() -> None:
    with pytest.raises(ValueError, match="bad partition spec 'dirichlet:-2'"):
        agent_data(get_task("mlp"), CFG, 0, 4, "dirichlet:-2")


def test_test_data_is_held_out() -> None:
    task = get_task("linreg")
    x, y = test_data(task, CFG)
    assert x.shape == (500, 10) and y.dtype == np.float32
    assert not x.flags.writeable


def test_tasks_never_import_torch_or_sklearn() -> None:
    code = (
        "import sys, fedmq.tasks; from fedmq.tasks import get_task;"
        "get_task('mnist-2nn'); get_task('linreg').load(fedmq.tasks.DataConfig());"
        "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
