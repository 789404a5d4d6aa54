"""One device's demo data for a browser agent, as a small msgpack document.

A phone has no MNIST: in a demo (``--shard I/N`` on the agent page) the page
fetches its shard from ``fedmq web``, which cuts it exactly as a Python agent
with ``--shard I/N`` cuts its own (:func:`fedmq.tasks.agent_data`), so both kinds
of agent train on the same rows. A real device brings its own data through a
browser task's data source (docs/WEB.md). The format is documented there:
``{"v": 1, "type": "shard", "task", "kind", "shard", "shards", "rows",
"features", "outputs", "x": <f4 rows x features, "y": <i4 labels | <f4 targets}``.

Invariants: numpy, msgpack and fedmq.tasks only; pure given the loaded data.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

from fedmq.tasks import DataConfig, agent_data, get_task

SHARD_VERSION = 1
#: the most shards a job is cut into (more would be a typo, or a denial of service)
MAX_SHARDS = 100_000


@dataclass(frozen=True, slots=True)
class ShardSource:
    """The one task and data config a ``fedmq web`` server hands shards of."""

    task: str
    data: DataConfig
    partition: str | None = None

    def encode(self, shard: int, shards: int) -> bytes:
        """Shard ``shard`` of ``shards`` of the task's training rows, encoded.

        Raises:
            ValueError: for a bad shard, or a task whose model takes no flat rows.
            FileNotFoundError: when the task's data are not on this machine.
        """
        if not 0 < shards <= MAX_SHARDS or not 0 <= shard < shards:
            raise ValueError(f"shard {shard}/{shards}: need 0 <= I < N <= {MAX_SHARDS}")
        task = get_task(self.task)
        if not task.model.sizes:
            raise ValueError(f"task {self.task!r} ({task.model.arch}) has no flat input size")
        x, y = agent_data(task, self.data, shard, shards, self.partition)
        labels = task.kind == "classification"
        packed: bytes = msgpack.packb(
            {
                "v": SHARD_VERSION,
                "type": "shard",
                "task": self.task,
                "kind": task.kind,
                "shard": shard,
                "shards": shards,
                "rows": len(x),
                "features": task.model.sizes[0],
                "outputs": task.model.sizes[-1],
                "x": np.ascontiguousarray(x, dtype="<f4").tobytes(),
                "y": np.ascontiguousarray(y, dtype="<i4" if labels else "<f4").tobytes(),
            }
        )
        return packed


def parse_shard(value: str) -> tuple[int, int]:
    """``I/N`` as (I, N).

    Raises:
        ValueError: for anything else.
    """
    index, sep, count = value.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise ValueError(f"shard wants I/N, e.g. 3/10, got {value!r}")
    return int(index), int(count)
