"""What a task is: data, a model described as data, a loss kind and a default plan.

Invariant: this module (like all of :mod:`fedmq.tasks`) imports numpy and the
standard library only, never torch, so a torch-free device can load a task's
data and a numpy trainer can share the same :class:`ModelSpec`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.spec import ModelSpec, TaskKind
from protocol import TrainPlan


@dataclass(frozen=True, slots=True)
class DataConfig:
    """Where a task finds its files and how it seeds splits and partitions.

    The coordinator and every agent must use the same config, so that agents'
    shards are disjoint and the held-out test set is the one nobody trained on.
    """

    #: a directory of data files (MNIST); ``None`` means the task's default place
    data_dir: Path | None = None
    #: seeds synthetic data, train/test splits and partitions (W1: 0)
    seed: int = 0
    #: check files against a ``SHA256SUMS`` next to them, where one exists
    verify_checksums: bool = True


@dataclass(frozen=True, slots=True)
class Dataset:
    """A task's training and held-out test data.

    ``x_*`` are float32 ``(n, d)``; ``y_*`` are int64 ``(n,)`` labels for
    classification or float32 ``(n,)``/``(n, k)`` targets for regression. The
    arrays are made read-only, because loaded datasets are cached and shared.

    Raises:
        ValueError: if dtypes, ranks or lengths do not fit together.
    """

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64] | npt.NDArray[np.float32]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64] | npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype != np.float32 or x.ndim != 2:
                raise ValueError(f"x_{split} must be float32 (n, d), got {x.dtype} {x.shape}")
            if y.dtype not in (np.int64, np.float32) or y.ndim not in (1, 2):
                raise ValueError(
                    f"y_{split} must be int64 or float32 (n,) or (n, k), got {y.dtype}"
                )
            if len(x) != len(y):
                raise ValueError(f"{split}: {len(x)} inputs but {len(y)} targets")
            x.setflags(write=False)
            y.setflags(write=False)
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                f"train has {self.x_train.shape[1]} features, test {self.x_test.shape[1]}"
            )


@dataclass(frozen=True, slots=True)
class Task:
    """A named learning problem: data, model, loss kind and default plan.

    ``load`` builds the whole :class:`Dataset` from a :class:`DataConfig`;
    callers go through :func:`fedmq.tasks.agent_data` and
    :func:`fedmq.tasks.test_data`, which cache it and cut one agent's shard.
    ``partition`` names the default partitioner (see :mod:`fedmq.tasks.partition`).
    """

    name: str
    model: ModelSpec
    kind: TaskKind
    plan: TrainPlan
    load: Callable[[DataConfig], Dataset]
    partition: str = "iid"
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "regression"):
            raise ValueError(f"task {self.name!r}: kind must be classification or regression")


def check_dataset(task: Task, data: Dataset) -> Dataset:
    """Return ``data`` if its targets suit ``task.kind``.

    Raises:
        ValueError: naming the task, for float labels on a classifier or integer
            targets on a regressor.
    """
    want = np.int64 if task.kind == "classification" else np.float32
    for split, y in (("train", data.y_train), ("test", data.y_test)):
        if y.dtype != want or (task.kind == "classification" and y.ndim != 1):
            raise ValueError(
                f"task {task.name!r} ({task.kind}): y_{split} is {y.dtype} {y.shape}, "
                f"expected {np.dtype(want)}{' (n,)' if want is np.int64 else ''}"
            )
    return data
