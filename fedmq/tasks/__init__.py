"""Tasks: data, model specs, partitions. Never imports torch (see spec.py)."""

from fedmq.tasks.data import agent_data, load_dataset, test_data
from fedmq.tasks.locate import locate
from fedmq.tasks.partition import PARTITIONS, Partition, agent_indices, parse_partition
from fedmq.tasks.registry import TASKS, get_task
from fedmq.tasks.spec import ARCHS, DataConfig, Dataset, ModelSpec, Task, TaskKind

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
