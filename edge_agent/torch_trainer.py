"""The built-in torch trainer: plain SGD on an agent's own data.

Invariants: the only module in fedmq that imports torch (the agent imports it
lazily, so a torch-free device never loads this file); never mutates the
caller's arrays or weights (wire weights are read-only views: they are copied
into the model); returns weights as float32 numpy copies in ``state_dict``
order. Training is deterministic for (weights, plan, round, index): sample
order comes from ``numpy.random.default_rng([plan.seed, round_no, index])``,
one fresh permutation per epoch, and torch itself draws no random numbers.

References: McMahan et al., "Communication-Efficient Learning of Deep Networks
from Decentralized Data" (AISTATS 2017) for the 2NN and CNN; DESIGN.md,
"Workload W1" for the exact local step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from edge_agent.proximal import proximal_mu
from edge_agent.trainer import TrainResult
from models.locate import locate
from models.spec import ModelSpec, TaskKind
from protocol import TrainPlan, Weights

#: rows per forward pass when evaluating; bounds activation memory on small devices
EVAL_BATCH = 1024
#: FedAvg CNN geometry: 28x28 input, 'same' 5x5 convs (padding 2), two 2x2 pools -> 7x7x64
_CNN_FLAT = 7 * 7 * 64


def build_module(spec: ModelSpec) -> nn.Module:
    """The torch module ``spec`` describes, with torch's default init.

    ``mlp`` is ``Sequential(Linear, ReLU, ..., Linear)`` so parameter names are
    ``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ... as in W1.

    Raises:
        ValueError: when a custom factory cannot be found or returns no Module.
    """
    if spec.arch in ("mlp", "linear"):
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(spec.sizes, spec.sizes[1:], strict=False):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        return nn.Sequential(*layers[:-1])
    if spec.arch == "cnn":
        # (n, 784) -> (n, 1, 28, 28) -> (n, 32, 14, 14) -> (n, 64, 7, 7) -> (n, 3136) -> (n, 10)
        return nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(_CNN_FLAT, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )
    assert spec.factory is not None  # ModelSpec guarantees a factory for 'custom'
    factory = locate(spec.factory)
    module = factory() if callable(factory) else None
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"model factory {spec.factory!r} returned {type(module).__name__}, not an nn.Module"
        )
    return module


def _to_weights(module: nn.Module) -> Weights:
    out: Weights = {}
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            raise ValueError(f"model state {name!r} is {tensor.dtype}; fedmq ships float32 only")
        out[name] = tensor.detach().to(torch.float32).numpy().copy()
    return out


def initial_weights(spec: ModelSpec, seed: int) -> Weights:
    """The round-0 global model: ``torch.manual_seed(seed)``, then :func:`build_module`.

    torch's global RNG is restored afterwards, so calling this has no side effect.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _to_weights(build_module(spec))


def _load(module: nn.Module, weights: Mapping[str, npt.NDArray[np.float32]]) -> None:
    """Copy ``weights`` into ``module``, refusing other names or shapes."""
    state = module.state_dict()
    if list(weights) != list(state):
        raise ValueError(f"weights name {list(weights)[:4]}..., model has {list(state)[:4]}...")
    for name, target in state.items():
        source = np.asarray(weights[name])
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(f"{name}: weights shape {source.shape}, model {tuple(target.shape)}")
        # state_dict tensors share the parameters' storage: one copy, straight in
        np.copyto(target.numpy(), source, casting="same_kind")


def _targets(kind: TaskKind, y: npt.NDArray[Any]) -> torch.Tensor:
    """Class labels as int64 (n,), or regression targets as float32 (n, k).

    Raises:
        ValueError: for classification targets that are not 1-D integer labels.
    """
    if kind == "classification":
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise ValueError(f"class labels must be 1-D integers, got {y.dtype} {y.shape}")
        return torch.tensor(np.asarray(y), dtype=torch.int64)
    t = torch.tensor(np.asarray(y), dtype=torch.float32)
    return t.reshape(len(t), -1)


def _inputs(x: npt.NDArray[Any]) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.float32)


def _loss(kind: TaskKind, out: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    if kind == "classification":
        return nn.functional.cross_entropy(out, target, reduction=reduction)
    return nn.functional.mse_loss(out, target, reduction=reduction)


def _batches(order: npt.NDArray[np.int64], size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(order), size):
        yield torch.from_numpy(order[start : start + size])


def _evaluate(
    module: nn.Module, kind: TaskKind, x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """Mean loss (and accuracy, or MSE) of ``module`` over all rows, in batches."""
    total_loss, correct = 0.0, 0
    module.eval()
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            out = module(x[start : start + EVAL_BATCH])
            target = y[start : start + EVAL_BATCH]
            total_loss += float(_loss(kind, out, target, "sum"))
            if kind == "classification":
                correct += int((out.argmax(dim=1) == target).sum())
    if kind == "regression":
        mse = total_loss / max(y.numel(), 1)
        return {"loss": mse, "mse": mse}
    n = max(len(x), 1)
    return {"loss": total_loss / n, "accuracy": correct / n}


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


class TorchTrainer:
    """:class:`edge_agent.trainer.Trainer` over one agent's rows, with torch.

    ``x`` is float32 ``(n, d)``; ``y`` int64 labels (classification) or float
    targets ``(n,)``/``(n, k)`` (regression). Both are copied once, here.
    ``threads`` sets torch's (process-wide) intra-op thread count.
    """

    name = "torch"

    def __init__(
        self,
        spec: ModelSpec,
        kind: TaskKind,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[Any],
        index: int,
        *,
        threads: int | None = None,
    ) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"agent {index}: {len(x)} inputs and {len(y)} targets")
        _set_threads(threads)
        self.spec, self.kind, self.index = spec, kind, index
        self.samples = len(x)
        self._x, self._y = _inputs(x), _targets(kind, y)
        self._module = build_module(spec)
        # Built once: plain SGD keeps no state between steps, and constructing the
        # first optimiser imports torch's compiler stack (~1 s), a start-up cost
        # that must not land in round 1.
        self._optimiser = torch.optim.SGD(self._module.parameters(), lr=0.0)

    def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult:
        """``plan.epochs`` epochs of plain SGD from ``weights``; metrics are running
        means over every sample seen (loss weighted by batch size).

        With a FedProx ``mu`` in the plan, each step adds ``mu * (w - weights)`` to
        the gradient; the reported loss stays the data loss, comparable across ``mu``.

        Raises:
            ValueError: for weights that do not fit the model, a batch size < 1, or
                a bad ``mu``.
        """
        if plan.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {plan.batch_size}")
        mu = proximal_mu(plan)
        _load(self._module, weights)
        if plan.epochs == 0:
            return TrainResult(_to_weights(self._module), self.samples, self.evaluate(weights))
        rng = np.random.default_rng([plan.seed, round_no, self.index])
        optimiser = self._optimiser
        for group in optimiser.param_groups:
            group["lr"] = plan.lr
        params = list(self._module.parameters())
        anchors = [p.detach().clone() for p in params] if mu else []
        total_loss, correct, seen = 0.0, 0, 0
        self._module.train()
        for _ in range(plan.epochs):
            for rows in _batches(rng.permutation(self.samples), plan.batch_size):
                target = self._y[rows]
                optimiser.zero_grad()
                out = self._module(self._x[rows])
                loss = _loss(self.kind, out, target, "mean")
                torch.autograd.backward(loss)
                for param, anchor in zip(params, anchors, strict=False):  # none when mu == 0
                    if param.grad is not None:  # grad of mu/2 * ||w - w_global||^2
                        param.grad.add_(param.detach() - anchor, alpha=mu)
                optimiser.step()
                total_loss += loss.item() * len(rows)
                seen += len(rows)
                if self.kind == "classification":
                    correct += int((out.argmax(dim=1) == target).sum())
        metrics = {"loss": total_loss / seen}
        if self.kind == "classification":
            metrics["accuracy"] = correct / seen
        else:
            metrics["mse"] = metrics["loss"]
        return TrainResult(_to_weights(self._module), self.samples, metrics)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        """Loss and accuracy (or MSE) of ``weights`` on this agent's own rows."""
        _load(self._module, weights)
        return _evaluate(self._module, self.kind, self._x, self._y)

    def initial_weights(self, seed: int) -> Weights:
        """The whole model as :func:`initial_weights` builds it (personal layers start here)."""
        return initial_weights(self.spec, seed)

    def predict(self, weights: Weights, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """The model's outputs ``(n, out)`` for inputs ``x`` (logits for classification)."""
        _load(self._module, weights)
        inputs = _inputs(x)
        self._module.eval()
        with torch.no_grad():
            outs = [
                self._module(inputs[start : start + EVAL_BATCH])
                for start in range(0, max(len(inputs), 1), EVAL_BATCH)
            ]
        return torch.cat(outs).numpy().astype(np.float32)


class TorchEvaluator:
    """Server-side evaluation of global weights on held-out data (same semantics as
    :meth:`TorchTrainer.evaluate`)."""

    def __init__(
        self,
        spec: ModelSpec,
        kind: TaskKind,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[Any],
        *,
        threads: int | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} test inputs but {len(y)} targets")
        _set_threads(threads)
        self.kind = kind
        self.samples = len(x)
        self._x, self._y = _inputs(x), _targets(kind, y)
        self._module = build_module(spec)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        """``{"loss", "accuracy"}`` for classification, ``{"loss", "mse"}`` for regression.

        Raises:
            ValueError: for weights that do not fit the model.
        """
        _load(self._module, weights)
        return _evaluate(self._module, self.kind, self._x, self._y)
