"""A torch-free trainer: softmax regression and linear regression in plain numpy.

Invariants: imports numpy and fedmq's numpy-only modules, never torch, so a
device without torch (or a swarm of a thousand agents in one process) can
train; never mutates the caller's arrays; returns float32 weights.

It trains :class:`~fedmq.tasks.ModelSpec` arch ``linear`` exactly as
:class:`edge_agent.torch_trainer.TorchTrainer` does: parameters ``"0.weight"``
``(out, in)`` and ``"0.bias"`` ``(out,)``; sample order
``numpy.random.default_rng([plan.seed, round_no, index])``, one permutation per
epoch; plain SGD on mean cross-entropy (classification) or mean squared error
over every output (regression); the same running metrics. All arithmetic is
float32, so the two agree to float rounding (tests/edge_agent pins the bound).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.trainer import TrainResult
from fedmq.tasks.spec import ModelSpec, TaskKind
from protocol import TrainPlan, Weights

F32 = npt.NDArray[np.float32]

#: rows per evaluation pass, as the torch trainer's, so memory stays bounded
EVAL_BATCH = 1024
WEIGHT, BIAS = "0.weight", "0.bias"


def _softmax_xent(out: F32, labels: npt.NDArray[np.int64]) -> tuple[float, F32]:
    """Mean cross-entropy of logits ``out`` (b, k) and its gradient w.r.t. ``out``."""
    shifted = out - out.max(axis=1, keepdims=True)  # (b, k), overflow-safe
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True, dtype=np.float32))  # (b, 1)
    log_probs = shifted - log_norm
    rows = np.arange(len(labels))
    loss = -float(log_probs[rows, labels].mean(dtype=np.float32))
    grad = np.exp(log_probs)
    grad[rows, labels] -= np.float32(1.0)
    return loss, grad / np.float32(len(labels))


def _squared_error(out: F32, target: F32) -> tuple[float, F32]:
    """Mean squared error over every element of (b, k) and its gradient w.r.t. ``out``."""
    diff = out - target
    return float((diff * diff).mean(dtype=np.float32)), diff * np.float32(2.0 / diff.size)


def _batches(order: npt.NDArray[np.int64], size: int) -> Iterator[npt.NDArray[np.int64]]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


class NumpyTrainer:
    """:class:`edge_agent.trainer.Trainer` for a ``linear`` model, in numpy.

    ``x`` is float32 ``(n, in)``; ``y`` int64 labels (classification) or float
    targets ``(n,)``/``(n, out)`` (regression). Both are copied once, here.

    Raises:
        ValueError: for another arch, or data that does not fit the model.
    """

    name = "numpy"

    def __init__(
        self, spec: ModelSpec, kind: TaskKind, x: npt.NDArray[Any], y: npt.NDArray[Any], index: int
    ) -> None:
        if spec.arch != "linear":
            raise ValueError(f"the numpy trainer trains arch 'linear' only, not {spec.arch!r}")
        fan_in, fan_out = spec.sizes
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"agent {index}: {len(x)} inputs and {len(y)} targets")
        if x.ndim != 2 or x.shape[1] != fan_in:
            raise ValueError(f"agent {index}: inputs {x.shape}, the model takes (n, {fan_in})")
        self.spec, self.kind, self.index = spec, kind, index
        self.samples = len(x)
        self._x: F32 = np.array(x, dtype=np.float32)
        self._shapes = {WEIGHT: (fan_out, fan_in), BIAS: (fan_out,)}
        if kind == "classification":
            self._labels = np.array(y, dtype=np.int64)
            if self._labels.min() < 0 or self._labels.max() >= fan_out:
                raise ValueError(f"agent {index}: labels outside 0..{fan_out - 1}")
            self._targets: F32 = np.empty((0, fan_out), np.float32)
        else:
            self._labels = np.empty(0, np.int64)
            self._targets = np.array(y, dtype=np.float32).reshape(len(x), -1)
            if self._targets.shape[1] != fan_out:
                raise ValueError(f"agent {index}: targets {y.shape}, the model gives {fan_out}")

    def _params(self, weights: Weights) -> tuple[F32, F32]:
        """Fresh float32 copies of the weight matrix and bias, shape-checked."""
        if sorted(weights) != sorted(self._shapes):
            raise ValueError(f"weights name {sorted(weights)}, model has {sorted(self._shapes)}")
        for name, shape in self._shapes.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"{name}: weights shape {weights[name].shape}, model {shape}")
        return (
            np.array(weights[WEIGHT], dtype=np.float32),
            np.array(weights[BIAS], dtype=np.float32),
        )

    def _loss(self, out: F32, rows: npt.NDArray[np.int64] | slice) -> tuple[float, F32]:
        if self.kind == "classification":
            return _softmax_xent(out, self._labels[rows])
        return _squared_error(out, self._targets[rows])

    def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult:
        """``plan.epochs`` epochs of plain SGD from ``weights``; metrics are running
        means over every sample seen (loss weighted by batch size).

        Raises:
            ValueError: for weights that do not fit the model, or a batch size < 1.
        """
        if plan.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {plan.batch_size}")
        w, b = self._params(weights)  # (out, in), (out,)
        if plan.epochs == 0:
            return TrainResult({WEIGHT: w, BIAS: b}, self.samples, self.evaluate(weights))
        lr = np.float32(plan.lr)
        rng = np.random.default_rng([plan.seed, round_no, self.index])
        total_loss, correct, seen = 0.0, 0, 0
        for _ in range(plan.epochs):
            for rows in _batches(rng.permutation(self.samples), plan.batch_size):
                xb = self._x[rows]  # (b, in)
                out = xb @ w.T + b  # (b, out)
                loss, grad = self._loss(out, rows)  # grad: (b, out)
                w -= lr * (grad.T @ xb)
                b -= lr * grad.sum(axis=0)
                total_loss += loss * len(rows)
                seen += len(rows)
                if self.kind == "classification":
                    correct += int((out.argmax(axis=1) == self._labels[rows]).sum())
        metrics = {"loss": total_loss / seen}
        if self.kind == "classification":
            metrics["accuracy"] = correct / seen
        else:
            metrics["mse"] = metrics["loss"]
        return TrainResult({WEIGHT: w, BIAS: b}, self.samples, metrics)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        """Loss and accuracy (or MSE) of ``weights`` on this agent's own rows."""
        w, b = self._params(weights)
        total_loss, correct = 0.0, 0
        for start in range(0, self.samples, EVAL_BATCH):
            rows = slice(start, start + EVAL_BATCH)
            out = self._x[rows] @ w.T + b
            loss, _ = self._loss(out, rows)
            total_loss += loss * len(out)
            if self.kind == "classification":
                correct += int((out.argmax(axis=1) == self._labels[rows]).sum())
        if self.kind == "regression":
            # the mean over every element: torch's mse_loss(reduction="sum") / numel
            mse = total_loss / self.samples
            return {"loss": mse, "mse": mse}
        return {"loss": total_loss / self.samples, "accuracy": correct / self.samples}
