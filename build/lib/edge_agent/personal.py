"""The device's own model: personal layers, fine-tuning and local inference.

Personal layers follow FedPer (Arivazhagan et al., "Federated Learning with
Personalization Layers", 2019): the plan names layers that stay on the device
(``TrainPlan.options["local_layers"]``, comma-separated tensor names,
docs/PROTOCOL.md 4.1). The coordinator's model carries only the shared
layers; :class:`DeviceTrainer` completes it with this device's personal layers,
trains the whole model, keeps the personal part and hands back the shared part
only, so a personal tensor cannot reach an update.

Invariants: torch-free (it wraps any :class:`LocalModel`); the weights it
returns from :meth:`DeviceTrainer.train` have exactly the names it was given;
without local layers ``train`` is a pass-through (fine-tuning happens only in
:meth:`DeviceTrainer.adopt`), so plain FedAvg runs are bit-identical with or
without it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.trainer import Trainer, TrainResult
from protocol import TrainPlan, Weights

#: the plan option naming the personal layers
LOCAL_LAYERS = "local_layers"
#: the "round" whose seed shuffles fine-tuning: training rounds are numbered from 1
FINETUNE_ROUND = 0


def local_layers(plan: TrainPlan) -> tuple[str, ...]:
    """The plan's personal tensor names, in the order given; ``()`` when there are none.

    Raises:
        ValueError: for a value that is not a string of distinct, non-empty names.
    """
    value = plan.options.get(LOCAL_LAYERS, "")
    if not isinstance(value, str):
        raise ValueError(f"plan option {LOCAL_LAYERS!r} must be a string, got {value!r}")
    if not value:
        return ()
    names = tuple(name.strip() for name in value.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"plan option {LOCAL_LAYERS!r}: want distinct names, got {value!r}")
    return names


def with_local_layers(plan: TrainPlan, names: Iterable[str]) -> TrainPlan:
    """``plan`` with its personal layers set to ``names`` (none: the option is dropped)."""
    options = {k: v for k, v in plan.options.items() if k != LOCAL_LAYERS}
    joined = ",".join(names)
    if joined:
        options[LOCAL_LAYERS] = joined
    checked = replace(plan, options=options)
    local_layers(checked)
    return checked


def shared_weights(weights: Weights, local: Iterable[str]) -> Weights:
    """``weights`` without the personal layers ``local``: what the coordinator announces.

    Raises:
        ValueError: when a personal name is not in ``weights``, or nothing would be shared.
    """
    local = set(local)
    unknown = sorted(local - weights.keys())
    if unknown:
        raise ValueError(f"personal layers {unknown} are not in the model ({list(weights)[:6]})")
    shared = {name: arr for name, arr in weights.items() if name not in local}
    if not shared:
        raise ValueError("every layer is personal: nothing would be federated")
    return shared


class LocalModel(Trainer, Protocol):
    """A trainer that can also build its initial model and run inference."""

    def initial_weights(self, seed: int) -> Weights: ...

    def predict(self, weights: Weights, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]: ...


class DeviceTrainer:
    """A :class:`~edge_agent.trainer.Trainer` that keeps this device's own model.

    The device model is the newest whole model this device holds: after a
    round, the round's global layers with the personal layers as trained (never
    the locally trained global layers, from which the update sent could be
    rebuilt); after :meth:`adopt` (the run's final
    model), the global shared layers plus its personal layers, fine-tuned for
    ``finetune_epochs`` epochs of plain SGD on its own data. Personal layers
    start as ``model.initial_weights(init_seed)`` (the coordinator's round-0
    values for the same seed) unless ``saved`` (a device model from an earlier
    session) holds them with the right shapes.

    ``train``/``adopt`` run on the agent's thread; ``predict`` may come from
    another, so a lock keeps the three apart (they share one model object).
    """

    def __init__(
        self,
        model: LocalModel,
        *,
        finetune_epochs: int = 0,
        init_seed: int = 0,
        saved: Weights | None = None,
    ) -> None:
        if finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
        self._model = model
        self.name = model.name
        self.samples = model.samples
        self._finetune_epochs = finetune_epochs
        self._init_seed = init_seed
        self._initial: Weights | None = None
        self._personal: Weights = {}
        self._saved = saved or {}
        self._device: Weights | None = dict(saved) if saved else None
        self._lock = threading.Lock()

    @property
    def device_model(self) -> Weights | None:
        """The whole model this device uses for inference (None before any training)."""
        return self._device

    @property
    def personal(self) -> Weights:
        """The personal layers as they are now (empty in a plain federated run)."""
        return dict(self._personal)

    def train(self, weights: Weights, plan: TrainPlan, round_no: int) -> TrainResult:
        """Train the shared ``weights`` completed with the personal layers; return shared only.

        Raises:
            ValueError: for bad local layers (unknown, or announced by the coordinator),
                or as the wrapped trainer raises.
        """
        with self._lock:
            local = local_layers(plan)
            result = self._model.train(self._complete(weights, local), plan, round_no)
            self._personal = {name: result.weights[name] for name in local}
            # the global layers as received, not as trained here: the device keeps no copy
            # of the update it is about to send (docs/EDGE.md, "Local state")
            self._device = self._complete(weights, local)
            shared = {name: result.weights[name] for name in weights}
            return TrainResult(shared, result.samples, result.metrics)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        """Metrics on this device's rows of ``weights`` completed with the personal layers."""
        with self._lock:
            return self._model.evaluate(self._complete(weights, tuple(self._personal)))

    def adopt(self, weights: Weights, plan: TrainPlan) -> Weights:
        """Make a final global model the device model: add the personal layers, fine-tune.

        Fine-tuning is plain SGD (the plan's batch size and rate, no proximal term)
        from the completed model, shuffled with round number :data:`FINETUNE_ROUND`.
        """
        with self._lock:
            full = self._complete(weights, local_layers(plan))
            if self._finetune_epochs:
                tune = TrainPlan(
                    epochs=self._finetune_epochs,
                    batch_size=plan.batch_size,
                    lr=plan.lr,
                    seed=plan.seed,
                )
                full = self._model.train(full, tune, FINETUNE_ROUND).weights
            else:
                full = {name: np.array(arr, dtype=np.float32) for name, arr in full.items()}
            self._device = full
            return full

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """The device model's outputs for ``x`` (logits for a classifier).

        Raises:
            ValueError: before the device holds a model.
        """
        with self._lock:
            if self._device is None:
                raise ValueError("no device model yet: train a round or adopt a model first")
            return self._model.predict(self._device, x)

    def _complete(self, weights: Weights, local: tuple[str, ...]) -> Weights:
        """``weights`` plus personal layers ``local``, in the model's own tensor order."""
        if not local:
            return weights
        announced = sorted(set(local) & weights.keys())
        if announced:
            raise ValueError(f"personal layers {announced} arrived in the global model")
        initial = self._initial_weights()
        unknown = sorted(set(local) - initial.keys())
        if unknown:
            raise ValueError(f"personal layers {unknown} are not in the model")
        out: Weights = {}
        for name, init in initial.items():
            if name in weights:
                out[name] = weights[name]
            elif name in local:
                out[name] = self._personal_layer(name, init)
            # any other missing name is left out: the wrapped trainer names it in its error
        return out

    def _personal_layer(self, name: str, init: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        for source in (self._personal, self._saved):
            layer = source.get(name)
            if layer is not None and layer.shape == init.shape:
                return layer
        return init

    def _initial_weights(self) -> Weights:
        if self._initial is None:
            self._initial = self._model.initial_weights(self._init_seed)
        return self._initial
