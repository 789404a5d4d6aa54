"""What one agent trains on and what the coordinator tests on, for a task.

Loaded datasets are cached per (loader, config): a process hosting several
agents (the demo) reads MNIST once. The cached arrays are read-only; the
slices handed out here are fresh copies. Invariant: numpy and stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from fedmq.tasks.partition import agent_indices
from fedmq.tasks.spec import DataConfig, Dataset, Task, check_dataset

Inputs = npt.NDArray[np.float32]
Targets = npt.NDArray[np.int64] | npt.NDArray[np.float32]


@lru_cache(maxsize=2)
def _load(load: Callable[[DataConfig], Dataset], data_cfg: DataConfig) -> Dataset:
    return load(data_cfg)


def load_dataset(task: Task, data_cfg: DataConfig) -> Dataset:
    """The task's whole dataset, loaded once per config and checked against its kind.

    Raises:
        FileNotFoundError, ValueError: from the task's loader or the check.
    """
    return check_dataset(task, _load(task.load, data_cfg))


def agent_data(
    task: Task, data_cfg: DataConfig, shard: int, num_shards: int, partition: str | None = None
) -> tuple[Inputs, Targets]:
    """Agent ``shard`` of ``num_shards``: its training rows, in partition order.

    ``partition`` defaults to the task's; the partition seed is ``data_cfg.seed``.

    Raises:
        ValueError: for a bad partition spec or shard, or bad data.
    """
    data = load_dataset(task, data_cfg)
    rows = agent_indices(
        partition or task.partition, data.y_train, shard, num_shards, data_cfg.seed
    )
    return data.x_train[rows], data.y_train[rows]


def release_datasets() -> None:
    """Drop the cached datasets: a one-agent process keeps its shard (a copy) and no more."""
    _load.cache_clear()


def test_data(task: Task, data_cfg: DataConfig) -> tuple[Inputs, Targets]:
    """The held-out test set (read-only arrays) for server-side evaluation."""
    data = load_dataset(task, data_cfg)
    return data.x_test, data.y_test


# pytest would otherwise collect this public helper as a test when imported into a test module
test_data.__test__ = False  # type: ignore[attr-defined]
