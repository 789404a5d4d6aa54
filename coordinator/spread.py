"""Compiled inner loops of the exact sum (:mod:`coordinator.exactsum`), when numba is here.

Why: numpy spends one pass over the model per operation, and cutting a term into
three bins takes a dozen (widen, scale, extract, add, subtract, per bin); these
loops do it in one pass, reading each float32 once and each bin once, about 6x
faster on the 2NN (BENCHMARKS.md, "Exact sum"). They compute the same IEEE
double operations in the same order as the numpy path, so the bins end up
holding the same numbers: numba keeps IEEE semantics (no reassociation, no
fused multiply-add) unless ``fastmath`` is asked for, and it is not, since the
extraction ``(x + c) - c`` is exactly the kind of expression fastmath would
simplify to ``x``.

``AVAILABLE`` is False when numba is not installed; :class:`~coordinator.exactsum.ExactSum`
then runs its numpy path, slower and identical. numba is imported by the first
:func:`kernels` call, not with this module, and compiled code is cached on disk
next to it (``cache=True``), so a process pays compilation once per machine.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: True when the compiled loops can be used (numba is in the coordinator extra)
AVAILABLE = importlib.util.find_spec("numba") is not None

Lane = npt.NDArray[np.float64]
Bits = npt.NDArray[np.uint32]
Values = npt.NDArray[np.float32]


def _extent(bits: Bits) -> tuple[int, int]:
    """The largest ``|value|`` and the smallest nonzero one minus one, as float32 bit
    patterns: with the sign bit cleared a magnitude's order is its integer order, NaN
    and Inf sort above every finite value, and ``0 - 1`` wraps to the largest integer."""
    top = np.uint32(0)
    low = np.uint32(0xFFFFFFFF)
    for i in range(bits.size):
        magnitude = bits[i] & np.uint32(0x7FFFFFFF)
        top = max(top, magnitude)
        low = min(low, magnitude - np.uint32(1))
    return int(top), int(low)


def _spread1(l0: Lane, values: Values, weight: float) -> None:
    """Every term ``weight * value`` fits the one bin ``l0``."""
    for i in range(values.size):
        l0[i] += np.float64(values[i]) * weight


def _spread2(lanes: tuple[Lane, Lane], values: Values, weight: float, c0: float) -> None:
    """Terms cut into bins ``lanes[0]`` (unit set by ``c0``) and ``lanes[1]`` (the rest,
    whole)."""
    l0, l1 = lanes
    for i in range(values.size):
        x = np.float64(values[i]) * weight
        p = (x + c0) - c0
        l0[i] += p
        l1[i] += x - p


def _spread3(
    lanes: tuple[Lane, Lane, Lane], values: Values, weight: float, cuts: tuple[float, float]
) -> None:
    """Terms cut into bins ``lanes[0]``, ``lanes[1]`` (units set by ``cuts``) and
    ``lanes[2]`` (the rest, whole)."""
    l0, l1, l2 = lanes
    c0, c1 = cuts
    for i in range(values.size):
        x = np.float64(values[i]) * weight
        p = (x + c0) - c0
        l0[i] += p
        x -= p
        p = (x + c1) - c1
        l1[i] += p
        l2[i] += x - p


@dataclass(frozen=True, slots=True)
class Kernels:
    """The compiled loops (each a numba dispatcher with the signature of its source)."""

    extent: Callable[[Bits], tuple[int, int]]
    spread1: Callable[[Lane, Values, float], None]
    spread2: Callable[[tuple[Lane, Lane], Values, float, float], None]
    spread3: Callable[[tuple[Lane, Lane, Lane], Values, float, tuple[float, float]], None]


@functools.cache
def kernels() -> Kernels:
    """The loops above, compiled (strict IEEE, no bounds checks, GIL released), and each
    run once on writable and on read-only input (decoded tensors are read-only views of
    the payload, a type of their own to numba), so that no update pays for compiling.

    Raises:
        ImportError: when numba is not installed (see ``AVAILABLE``).
    """
    from numba import njit

    jit: Any = njit(cache=True, nogil=True, boundscheck=False)
    compiled = Kernels(jit(_extent), jit(_spread1), jit(_spread2), jit(_spread3))
    lane = np.zeros(1, np.float64)
    for values in (np.zeros(1, np.float32), np.frombuffer(bytes(4), np.float32)):
        compiled.extent(values.view(np.uint32))
        compiled.spread1(lane, values, 1.0)
        compiled.spread2((lane, lane), values, 1.0, 1.0)
        compiled.spread3((lane, lane, lane), values, 1.0, (1.0, 1.0))
    return compiled
