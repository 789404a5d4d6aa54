"""Updates as vectors in the ring Z_(2^b), so that masks and sums are exact integer maths.

References:
    Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
    Learning", CCS 2017, §3: inputs are vectors in Z_R, masked and summed mod R.
    Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015:
    stochastic rounding keeps the quantised value unbiased.

An agent's input is ``[w, q_1, ..., q_L]`` with ``w = min(samples, weight_max)`` and
``q_i = stochastic_round(w * clip(delta_i, -clip, +clip) * 2^frac_bits)`` as two's
complement integers mod ``2^ring_bits``. :class:`RingSpec` refuses parameters for
which the sum of ``max_agents`` inputs could leave ``(-2^(b-1), 2^(b-1))``, so the
unmasked sum decodes without wrap-around: every bound is declared, none is hoped for.
Pure: randomness comes from the caller's generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.tensors import Weights

#: the rings fedmq offers: 32-bit keeps a masked input the size of a float32 update
RING_BITS = (32, 64)
#: float64 rounds exactly below 2^52, so one agent's scaled value must stay under it
_EXACT_BITS = 52

Ring = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class RingSpec:
    """The declared encoding of one SecAgg round (announced with the model).

    Raises ``ValueError`` on construction when the bounds could overflow.
    """

    ring_bits: int
    frac_bits: int
    #: every delta coordinate is clipped to [-clip, +clip] before scaling
    clip: float
    #: an agent's weight (its sample count) is capped at this
    weight_max: int
    #: at most this many inputs are summed (the round's cohort size)
    max_agents: int

    def __post_init__(self) -> None:
        if self.ring_bits not in RING_BITS:
            raise ValueError(f"ring_bits must be one of {RING_BITS}, got {self.ring_bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive number, got {self.clip}")
        if self.weight_max < 1 or self.max_agents < 1 or self.frac_bits < 0:
            raise ValueError("weight_max and max_agents must be >= 1, frac_bits >= 0")
        one = self.weight_max * self.clip * 2.0**self.frac_bits  # the largest |q_i| before rounding
        if one > 2.0**_EXACT_BITS:
            raise ValueError(f"weight_max * clip * 2^frac_bits = {one:.3g} > 2^{_EXACT_BITS}")
        # |sum q_i| <= max_agents * (one + 1): the +1 is stochastic rounding's ceiling
        half = 2.0 ** (self.ring_bits - 1)
        if self.max_agents * (one + 1) >= half or self.max_agents * self.weight_max >= half:
            raise ValueError(
                f"{self.max_agents} inputs of up to {one:.3g} can overflow a "
                f"{self.ring_bits}-bit ring: lower frac_bits, clip or weight_max"
            )

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype("<u4" if self.ring_bits == 32 else "<u8")

    @property
    def step(self) -> float:
        """The quantisation step of one weighted coordinate, ``2^-frac_bits``."""
        return 2.0**-self.frac_bits


def choose_frac_bits(ring_bits: int, clip: float, weight_max: int, max_agents: int) -> int:
    """The most fractional bits for which :class:`RingSpec` guarantees no overflow.

    Raises:
        ValueError: if not even ``frac_bits = 0`` fits (too many agents or too large a weight).
    """
    for bits in range(min(ring_bits, _EXACT_BITS), -1, -1):
        try:
            return RingSpec(ring_bits, bits, clip, weight_max, max_agents).frac_bits
        except ValueError:
            continue
    raise ValueError(
        f"{max_agents} agents of weight up to {weight_max} and clip {clip} do not fit a "
        f"{ring_bits}-bit ring"
    )


def ring_length(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Elements of an input: the weight, then every coordinate in the model's order."""
    return 1 + sum(math.prod(shape) for shape in shapes.values())


def encode_input(
    delta: Weights, samples: int, spec: RingSpec, rng: np.random.Generator
) -> Ring:
    """``[w, q_1..q_L]`` mod 2^b for ``delta`` (tensors in the model's order).

    ``w = min(samples, weight_max)``: the weighted sum ``sum w_k * delta_k`` and the
    total weight are both summed under the masks.
    """
    weight = min(samples, spec.weight_max)
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in delta.values()])
    if not np.isfinite(flat).all():
        raise ValueError("the delta holds NaN or Inf")
    np.clip(flat, -spec.clip, spec.clip, out=flat)
    flat *= weight * 2.0**spec.frac_bits  # (L,) float64, |x| <= 2^52: floor() below is exact
    flat += rng.random(flat.shape)  # floor(x + U[0,1)) is x rounded up with probability frac(x)
    q = np.floor(flat).astype(np.int64)  # (L,) int64, two's complement
    out = np.empty(q.size + 1, dtype=np.int64)
    out[0], out[1:] = weight, q
    return _to_ring(out, spec)


def _to_ring(values: npt.NDArray[np.int64], spec: RingSpec) -> Ring:
    if spec.ring_bits == 64:
        return values.view(np.uint64)
    return (values & 0xFFFFFFFF).astype(np.uint32)  # two's complement mod 2^32


def signed(total: Ring, spec: RingSpec) -> npt.NDArray[np.int64]:
    """Ring elements as the signed integers they encode, in ``[-2^(b-1), 2^(b-1))``."""
    if spec.ring_bits == 64:
        return np.asarray(total, dtype=np.uint64).view(np.int64)
    wide = np.asarray(total, dtype=np.uint32).astype(np.int64)
    wide[wide >= 1 << 31] -= 1 << 32
    return wide


def add_into(acc: Ring, x: Ring) -> None:
    """``acc += x`` mod 2^b, in place (numpy's unsigned arithmetic wraps)."""
    np.add(acc, x, out=acc)


def subtract_into(acc: Ring, x: Ring) -> None:
    """``acc -= x`` mod 2^b, in place."""
    np.subtract(acc, x, out=acc)


@dataclass(frozen=True, slots=True)
class RingSum:
    """An unmasked sum decoded: the total weight and the weighted mean delta."""

    samples: int
    delta: Weights


def decode_sum(total: Ring, spec: RingSpec, shapes: Mapping[str, tuple[int, ...]]) -> RingSum:
    """The weighted mean ``sum w_k delta_k / sum w_k`` from the unmasked ring sum.

    Raises:
        ValueError: if the length does not match ``shapes`` or the total weight is not positive.
    """
    values = signed(total, spec)
    if values.size != ring_length(shapes):
        raise ValueError(f"{values.size} ring elements for {ring_length(shapes)} expected")
    weight = int(values[0])
    if weight <= 0:
        raise ValueError(f"total weight {weight} is not positive")
    scale = 1.0 / (weight * 2.0**spec.frac_bits)
    out: Weights = {}
    offset = 1
    for name, shape in shapes.items():
        n = math.prod(shape)
        chunk = values[offset : offset + n].astype(np.float64) * scale  # (n,) int64 -> float64
        out[name] = chunk.astype(np.float32).reshape(shape)
        offset += n
    return RingSum(weight, out)
