"""A torch-free trainer: linear/softmax regression and small MLPs in plain numpy.

Invariants: imports numpy and fedmq's numpy-only modules, never torch, so a
device without torch (or a swarm of a thousand agents in one process) can
train; never mutates the caller's arrays; returns float32 weights.

It trains :class:`~fedmq.tasks.ModelSpec` archs ``linear`` and ``mlp`` exactly
as :class:`edge_agent.torch_trainer.TorchTrainer` does: a Linear/ReLU stack
whose layer ``k`` has parameters ``"{2k}.weight"`` ``(out, in)`` and
``"{2k}.bias"`` ``(out,)`` (``nn.Sequential``'s names; ``linear`` is the
one-layer stack); every gradient of a step is computed before any parameter
moves, as torch's optimiser does; sample order
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

from edge_agent.proximal import add_proximal_grad, proximal_mu
from edge_agent.trainer import TrainResult
from models.spec import ModelSpec, TaskKind
from protocol import TrainPlan, Weights

F32 = npt.NDArray[np.float32]

#: rows per evaluation pass, as the torch trainer's, so memory stays bounded
EVAL_BATCH = 1024
#: the archs this trainer builds; others (cnn, custom) need the torch trainer
NUMPY_ARCHS = ("linear", "mlp")

#: one layer's (weight (out, in), bias (out,)), float32
Layer = tuple[F32, F32]


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


def _forward(layers: list[Layer], x: F32) -> list[F32]:
    """Each layer's input, then the output: ReLU between layers, none after the last."""
    acts = [x]
    for k, (w, b) in enumerate(layers):
        out = acts[-1] @ w.T + b  # (batch, out)
        acts.append(out if k == len(layers) - 1 else np.maximum(out, np.float32(0.0)))
    return acts


def _gradients(layers: list[Layer], acts: list[F32], grad: F32) -> list[Layer]:
    """Backpropagate ``grad`` (w.r.t. the output) into each layer's (weight, bias) gradient."""
    grads: list[Layer] = []
    for k in range(len(layers) - 1, -1, -1):
        inputs = acts[k]
        grads.append((grad.T @ inputs, grad.sum(axis=0)))
        if k > 0:  # through the layer, then through the ReLU that made its input
            grad = (grad @ layers[k][0]) * (inputs > 0)
    return grads[::-1]


class NumpyTrainer:
    """:class:`edge_agent.trainer.Trainer` for a ``linear`` or ``mlp`` model, in numpy.

    ``x`` is float32 ``(n, in)``; ``y`` int64 labels (classification) or float
    targets ``(n,)``/``(n, out)`` (regression). Both are copied once, here.

    Raises:
        ValueError: for another arch, or data that does not fit the model.
    """

    name = "numpy"

    def __init__(
        self, spec: ModelSpec, kind: TaskKind, x: npt.NDArray[Any], y: npt.NDArray[Any], index: int
    ) -> None:
        if spec.arch not in NUMPY_ARCHS:
            raise ValueError(
                f"the numpy trainer trains archs {', '.join(NUMPY_ARCHS)}, not {spec.arch!r}"
            )
        fan_in, fan_out = spec.sizes[0], spec.sizes[-1]
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"agent {index}: {len(x)} inputs and {len(y)} targets")
        if x.ndim != 2 or x.shape[1] != fan_in:
            raise ValueError(f"agent {index}: inputs {x.shape}, the model takes (n, {fan_in})")
        self.spec, self.kind, self.index = spec, kind, index
        self.samples = len(x)
        self._x: F32 = np.array(x, dtype=np.float32)
        self._shapes: dict[str, tuple[int, ...]] = {}
        for k, (n_in, n_out) in enumerate(zip(spec.sizes, spec.sizes[1:], strict=False)):
            self._shapes[f"{2 * k}.weight"] = (n_out, n_in)
            self._shapes[f"{2 * k}.bias"] = (n_out,)
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

    def _params(self, weights: Weights) -> list[Layer]:
        """Fresh float32 copies of each layer's weight matrix and bias, shape-checked."""
        if sorted(weights) != sorted(self._shapes):
            raise ValueError(f"weights name {sorted(weights)}, model has {sorted(self._shapes)}")
        for name, shape in self._shapes.items():
            if tuple(weights[name].shape) != shape:
                raise ValueError(f"{name}: weights shape {weights[name].shape}, model {shape}")
        return [
            (
                np.array(weights[f"{2 * k}.weight"], dtype=np.float32),
                np.array(weights[f"{2 * k}.bias"], dtype=np.float32),
            )
            for k in range(len(self._shapes) // 2)
        ]

    def _weights(self, layers: list[Layer]) -> Weights:
        out: Weights = {}
        for k, (w, b) in enumerate(layers):
            out[f"{2 * k}.weight"], out[f"{2 * k}.bias"] = w, b
        return out

    def _loss(self, out: F32, rows: npt.NDArray[np.int64] | slice) -> tuple[float, F32]:
        if self.kind == "classification":
            return _softmax_xent(out, self._labels[rows])
        return _squared_error(out, self._targets[rows])

    def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult:
        """``plan.epochs`` epochs of plain SGD from ``weights``; metrics are running
        means over every sample seen (loss weighted by batch size).

        With a FedProx ``mu`` in the plan, every layer's gradient gets
        ``mu * (w - weights)`` (:func:`edge_agent.proximal.add_proximal_grad`).

        Raises:
            ValueError: for weights that do not fit the model, a batch size < 1,
                or a bad ``mu``.
        """
        if plan.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {plan.batch_size}")
        mu = proximal_mu(plan)
        layers = self._params(weights)
        anchors = self._params(weights) if mu else layers  # only read when mu > 0
        if plan.epochs == 0:
            return TrainResult(self._weights(layers), self.samples, self.evaluate(weights))
        lr = np.float32(plan.lr)
        rng = np.random.default_rng([plan.seed, round_no, self.index])
        total_loss, correct, seen = 0.0, 0, 0
        for _ in range(plan.epochs):
            for rows in _batches(rng.permutation(self.samples), plan.batch_size):
                acts = _forward(layers, self._x[rows])
                out = acts[-1]  # (b, out)
                loss, grad = self._loss(out, rows)  # grad: (b, out)
                for (w, b), (w0, b0), (grad_w, grad_b) in zip(
                    layers, anchors, _gradients(layers, acts, grad), strict=True
                ):
                    w[...] -= lr * add_proximal_grad(grad_w, w, w0, mu)  # in place: ``layers``
                    b[...] -= lr * add_proximal_grad(grad_b, b, b0, mu)  # holds these arrays
                total_loss += loss * len(rows)
                seen += len(rows)
                if self.kind == "classification":
                    correct += int((out.argmax(axis=1) == self._labels[rows]).sum())
        metrics = {"loss": total_loss / seen}
        if self.kind == "classification":
            metrics["accuracy"] = correct / seen
        else:
            metrics["mse"] = metrics["loss"]
        return TrainResult(self._weights(layers), self.samples, metrics)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        """Loss and accuracy (or MSE) of ``weights`` on this agent's own rows."""
        layers = self._params(weights)
        total_loss, correct = 0.0, 0
        for start in range(0, self.samples, EVAL_BATCH):
            rows = slice(start, start + EVAL_BATCH)
            out = _forward(layers, self._x[rows])[-1]
            loss, _ = self._loss(out, rows)
            total_loss += loss * len(out)
            if self.kind == "classification":
                correct += int((out.argmax(axis=1) == self._labels[rows]).sum())
        if self.kind == "regression":
            # the mean over every element: torch's mse_loss(reduction="sum") / numel
            mse = total_loss / self.samples
            return {"loss": mse, "mse": mse}
        return {"loss": total_loss / self.samples, "accuracy": correct / self.samples}

    def initial_weights(self, seed: int) -> Weights:
        """A seeded init with torch's default distribution, U(+-1/sqrt(fan_in)) (not its
        numbers: those need torch). Personal layers of a numpy device start here."""
        rng = np.random.default_rng(seed)
        out: Weights = {}
        for name, shape in self._shapes.items():
            bound = 1.0 / np.sqrt(self._shapes[name.replace("bias", "weight")][1])
            out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        return out

    def predict(self, weights: Weights, x: npt.NDArray[Any]) -> F32:
        """The model's outputs ``(n, out)`` for inputs ``x`` (logits for classification)."""
        return _forward(self._params(weights), np.asarray(x, dtype=np.float32))[-1]
