"""A complete user task: its own data loader and its own torch model.

Name it wherever fedmq takes a task, by file path or (if importable) by module:
``docs/examples/custom_task.py:TASK`` or ``my_package.my_tasks:TASK``; see
:func:`fedmq.tasks.get_task`. ``python docs/examples/custom_task.py`` trains
it in-process with the FedAvg reference loop and prints test accuracy per round.

Three rules keep a task portable across devices:

- ``load`` is a pure function of the :class:`DataConfig`, so the coordinator
  and every agent build the same arrays; each agent then keeps only its shard.
- torch is imported inside the model factory only, so a torch-free device
  (a numpy trainer) can still load this file and its data.
- the factory is named as ``f"{__name__}:build_model"``, which resolves both
  when this file is imported as a module and when it is loaded by path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmq.tasks import DataConfig, Dataset, ModelSpec, Task
from protocol import TrainPlan

TRAIN, TEST = 2000, 500
#: std of the Gaussian jitter around each moon; 0.15 leaves a little overlap
NOISE = 0.15


def load_moons(cfg: DataConfig) -> Dataset:
    """Two interleaving half-circles in 2-D, labels 0/1, seeded by ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    n = TRAIN + TEST
    y = rng.integers(0, 2, size=n)
    angle = rng.uniform(0.0, np.pi, size=n)
    # moon 0: upper arc centred at (0, 0); moon 1: lower arc centred at (1, 0.5)
    x = np.where(
        y[:, None] == 0,
        np.stack([np.cos(angle), np.sin(angle)], axis=1),
        np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1),
    )
    x = (x + rng.normal(0.0, NOISE, size=x.shape)).astype(np.float32)
    y = y.astype(np.int64)
    return Dataset(x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:])


def build_model() -> Any:
    """A small tanh network: something the built-in archs do not offer."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2)
    )


TASK = Task(
    name="moons",
    model=ModelSpec(arch="custom", factory=f"{__name__}:build_model"),
    kind="classification",
    plan=TrainPlan(epochs=2, batch_size=16, lr=0.1, seed=0),
    load=load_moons,
    description="two moons, a custom 2-32-32-2 tanh network (docs/examples/custom_task.py)",
)


if __name__ == "__main__":
    from fedmq_tools.reference import run_reference

    run = run_reference("iid", rounds=10, task=TASK, agents=4)
    print("test accuracy per round:", [round(a or 0.0, 4) for a in run["accuracy"]])
