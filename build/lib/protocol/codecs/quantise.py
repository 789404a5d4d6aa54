"""Value quantisers: a flat float32 vector to wire fields and back.

Two families, both on a 1-D vector of ``m`` values (a whole tensor, or the
values top-k kept):

* floats: ``{"val": <f4 | <f2 array (m,)}``. float16 saturates at +-65504 so a
  large finite value never becomes Inf (its excess stays in the agent's residual).
* scaled integers (``int8``, ``qsgd``): ``{"q": |i1 array (m,), "scale": <f4 array
  (nblocks,)}`` with ``x_hat[i] = q[i] * scale[i // block]``. Each block's step is
  ``max(peak / levels, 2**-126)`` where ``peak`` is the block's largest |x|, so
  ``|q| <= levels`` always and an all-zero block still has a positive step.
  ``int8`` rounds to nearest (levels = 127); ``qsgd`` rounds stochastically,
  up with probability equal to the remainder, so E[x_hat] = x (unbiased).

References: Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient
Quantization and Encoding" (NeurIPS 2017), stochastic rounding to s levels with
bucketing; we scale by the bucket's max-norm rather than its 2-norm, which bounds
each value's error by one step.

Invariants: decoders check dtype, count, level range and step positivity before
they multiply anything; all errors are WireError.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.codecs.spec import Quantiser
from protocol.errors import RejectReason, WireError
from protocol.tensors import decode_array, encode_array

F16_MAX = float(np.finfo(np.float16).max)  # 65504
F32_MAX = float(np.finfo(np.float32).max)
#: smallest step: float32's smallest normal, so steps never underflow to zero
MIN_STEP = float(np.finfo(np.float32).tiny)

Floats = npt.NDArray[np.float32]


def to_float(x: Floats, dtype: str) -> npt.NDArray[Any]:
    """Cast for the wire; float16 saturates finite values (NaN/Inf pass through)."""
    if dtype == "<f4":
        return x.astype("<f4", copy=False)
    clipped = np.where(np.isfinite(x), np.clip(x, -F16_MAX, F16_MAX), x)
    return clipped.astype("<f2")


def block_count(m: int, block: int) -> int:
    """Scales a vector of ``m`` values carries (block 0: one per tensor, none if empty)."""
    if m == 0:
        return 0
    return -(-m // block) if block else 1


def quantise(x: Floats, q: Quantiser, rng: np.random.Generator | None) -> dict[str, Any]:
    """Write the 1-D ``x`` with quantiser ``q`` as entry fields.

    Raises:
        ValueError: if ``x`` holds NaN or Inf (integers cannot carry them) or a
            stochastic quantiser gets no ``rng``.
    """
    if q.float_dtype is not None:
        return {"val": encode_array(to_float(x, q.float_dtype))}
    if not np.isfinite(x).all():
        raise ValueError("an integer quantiser cannot encode NaN or Inf")
    m = x.size
    block = q.block or max(m, 1)
    nblocks = block_count(m, block)
    padded = np.zeros(nblocks * block, dtype=np.float64)
    padded[:m] = np.abs(x)
    peak = padded.reshape(nblocks, block).max(axis=1)  # (m,) -> (nblocks, block) -> (nblocks,)
    step = np.maximum(peak / q.levels, MIN_STEP).astype("<f4")  # (nblocks,) > 0
    # Rounding may lift levels * step past float32's max; one ulp down keeps it finite.
    over = step.astype(np.float64) * q.levels > F32_MAX
    step[over] = np.nextafter(step[over], np.float32(0))
    ratio = x.astype(np.float64) / np.repeat(step.astype(np.float64), block)[:m]  # |.| <~ levels
    if q.stochastic:
        if rng is None:
            raise ValueError("a stochastic quantiser needs an rng")
        low = np.floor(ratio)
        ints = low + (rng.random(m) < ratio - low)
    else:
        ints = np.rint(ratio)
    ints = np.clip(ints, -q.levels, q.levels).astype("|i1")  # (m,) int8
    return {"q": encode_array(ints), "scale": encode_array(step)}


def dequantise(entry: Mapping[str, Any], q: Quantiser, m: int, what: str) -> Floats:
    """Rebuild ``m`` float32 values from :func:`quantise`'s fields.

    Raises:
        WireError: BAD_CODEC for a field the quantiser does not write, a wrong
            dtype or count, |q| above the levels or a step <= 0; NON_FINITE
            when ``q * scale`` overflows; MALFORMED, TOO_LARGE or NON_FINITE
            from the array decoder.
    """
    if q.float_dtype is not None:
        floats: Floats = _field(entry, "val", q.float_dtype, m, what).astype(
            np.float32, copy=False
        )
        return floats
    ints = _field(entry, "q", "|i1", m, what)
    block = q.block or max(m, 1)
    nblocks = block_count(m, block)
    step = _field(entry, "scale", "<f4", nblocks, what)
    if nblocks and not (step > 0).all():
        raise WireError(RejectReason.BAD_CODEC, f"{what}.scale: steps must be > 0")
    if m and int(np.abs(ints.astype(np.int16)).max()) > q.levels:
        raise WireError(RejectReason.BAD_CODEC, f"{what}.q: |q| > {q.levels} levels")
    with np.errstate(over="ignore"):  # an absurd step overflows: refused just below
        values: Floats = ints.astype(np.float32) * np.repeat(step, block)[:m]
    if not np.isfinite(values).all():
        raise WireError(RejectReason.NON_FINITE, f"{what}: q times scale is not finite")
    return values


def _field(
    entry: Mapping[str, Any], key: str, dtype: str, count: int, what: str
) -> npt.NDArray[Any]:
    obj = entry.get(key)
    if obj is None:
        raise WireError(RejectReason.BAD_CODEC, f"{what}: no {key!r} under this codec")
    arr = decode_array(obj, f"{what}.{key}", max_elements=count)
    if arr.dtype.str != dtype or arr.shape != (count,):
        detail = f"{what}.{key}: {arr.dtype.str} {arr.shape}, want {dtype} ({count},)"
        raise WireError(RejectReason.BAD_CODEC, detail)
    return arr
