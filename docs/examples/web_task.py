"""The coordinator's half of the browser task in docs/examples/web_task.js.

The model must be the one the browser module names (an MLP 64-64-10 on 8x8 digits in
[0, 1]); the data here is only what the coordinator tests the global model on
(scikit-learn's digits, held out as the built-in ``digits`` task holds them out).
Python agents could join too, with this task's training rows.

    fedmq coordinator --broker mqtt://localhost:1883 --job draw \\
        --task docs/examples/web_task.py:TASK --min-agents 2 --deadline 600 --rounds 50
"""

from fedmq.tasks import ModelSpec, Task
from fedmq.tasks.datasets import load_digits
from protocol import TrainPlan

TASK = Task(
    name="my-digits",
    model=ModelSpec("mlp", (64, 64, 10)),
    kind="classification",
    # a phone holds a few dozen drawings: many small steps over them
    plan=TrainPlan(epochs=5, batch_size=8, lr=0.1, seed=0),
    load=load_digits,
    description="digits drawn on phones (docs/examples/web_task.js)",
)
