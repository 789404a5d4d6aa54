"""Models described as data, so trainers for any framework build the same network.

Invariant: standard library only (no numpy, no torch): a trainer imports this
without pulling in datasets, and the wire spec (docs/PROTOCOL.md) documents the
same layouts for implementations in other languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["classification", "regression"]

#: Architectures :func:`edge_agent.torch_trainer.build_module` knows how to build.
ARCHS = ("mlp", "linear", "cnn", "custom")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model as plain data, so trainers for any framework can build it.

    ``mlp``: Linear/ReLU stack over ``sizes`` (at least input and output), e.g.
    ``(784, 200, 200, 10)``. ``linear``: one Linear, ``sizes == (in, out)``.
    ``cnn``: the FedAvg paper's MNIST CNN on flat 784-pixel input; ``sizes``
    stays empty. ``custom``: ``factory`` is ``"module:callable"`` or
    ``"path/to/file.py:callable"``, called with no arguments, returning a torch
    ``nn.Module``.

    Raises:
        ValueError: for an unknown arch or sizes/factory that do not fit it.
    """

    arch: str
    sizes: tuple[int, ...] = ()
    factory: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown model arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if any(not isinstance(s, int) or s < 1 for s in self.sizes):
            raise ValueError(f"model sizes must be positive ints, got {self.sizes!r}")
        if self.arch == "mlp" and len(self.sizes) < 2:
            raise ValueError(f"an mlp needs at least (in, out) sizes, got {self.sizes!r}")
        if self.arch == "linear" and len(self.sizes) != 2:
            raise ValueError(f"a linear model needs sizes (in, out), got {self.sizes!r}")
        if self.arch == "cnn" and self.sizes:
            raise ValueError("the cnn arch has fixed sizes (1x28x28 -> 10); leave sizes empty")
        if (self.arch == "custom") != (self.factory is not None):
            raise ValueError("factory is required for arch 'custom' and only allowed there")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory must look like 'module:callable', got {self.factory!r}")
