"""Tasks: data, partitions and the built-in registry; model specs come from :mod:`models`.

Never imports torch (see spec.py)."""

from fedmq.tasks.data import agent_data, load_dataset, test_data
from fedmq.tasks.partition import PARTITIONS, Partition, agent_indices, parse_partition
from fedmq.tasks.registry import TASKS, get_task
from fedmq.tasks.spec import DataConfig, Dataset, Task
from models.locate import locate
from models.spec import ARCHS, ModelSpec, TaskKind

__all__ = [
    "ARCHS",
    "PARTITIONS",
    "TASKS",
    "DataConfig",
    "Dataset",
    "ModelSpec",
    "Partition",
    "Task",
    "TaskKind",
    "agent_data",
    "agent_indices",
    "get_task",
    "load_dataset",
    "locate",
    "parse_partition",
    "test_data",
]
