"""ndarrays on the wire: ``{"dtype", "shape", "data"}`` with raw little-endian bytes.

Never pickle. A decoder checks the dtype against a short allow-list, the shape
against the byte count, and (for floats) finiteness, before any array is used.
Decoded arrays are zero-copy, read-only views of the payload.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.errors import RejectReason, WireError

#: Named float32 tensors in a fixed order: a model's weights or an update's delta.
Weights = dict[str, npt.NDArray[np.float32]]

#: dtype strings accepted on the wire (numpy ``dtype.str``, explicit byte order).
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name) for name in ("<f4", "<f2", "<f8", "|i1", "|u1", "<i4", "<u4", "<i8")
}
MAX_DIMS = 8


def encode_array(array: npt.NDArray[Any]) -> dict[str, Any]:
    """Describe one array as a msgpack-ready dict, little-endian."""
    arr = np.asarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dtype.str not in DTYPES:
        raise TypeError(f"dtype {arr.dtype} cannot travel; use one of {sorted(DTYPES)}")
    data = np.ascontiguousarray(arr, dtype=dtype).tobytes()
    return {"dtype": dtype.str, "shape": list(arr.shape), "data": data}


def decode_array(obj: Any, what: str, max_elements: int | None = None) -> npt.NDArray[Any]:
    """Rebuild one array from :func:`encode_array`'s dict.

    Raises:
        WireError: MALFORMED for wrong types or a byte count that does not match
            the shape; TOO_LARGE above ``max_elements``; NON_FINITE for NaN/Inf.
    """
    if not isinstance(obj, Mapping):
        raise WireError(RejectReason.MALFORMED, f"{what}: expected a map")
    dtype_name, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise WireError(RejectReason.MALFORMED, f"{what}: dtype {dtype_name!r} not allowed")
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS:
        raise WireError(RejectReason.MALFORMED, f"{what}: shape must be a list of <= 8 ints")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise WireError(RejectReason.MALFORMED, f"{what}: shape {shape!r} has a non-count")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(RejectReason.MALFORMED, f"{what}: data must be binary")
    dtype = DTYPES[dtype_name]
    count = math.prod(shape)  # exact: np.prod would wrap around int64
    if max_elements is not None and count > max_elements:
        raise WireError(RejectReason.TOO_LARGE, f"{what}: {count} elements > {max_elements}")
    if len(data) != count * dtype.itemsize:
        raise WireError(
            RejectReason.MALFORMED,
            f"{what}: {len(data)} bytes for shape {list(shape)} of {dtype_name}",
        )
    try:
        arr = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    except ValueError:  # a zero-sized shape with a dimension numpy cannot index
        raise WireError(RejectReason.MALFORMED, f"{what}: shape {list(shape)} too large") from None
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise WireError(RejectReason.NON_FINITE, f"{what}: NaN or Inf")
    return arr


def encode_weights(weights: Mapping[str, npt.NDArray[Any]]) -> list[dict[str, Any]]:
    """Named tensors as an ordered list of ``{"name", "dtype", "shape", "data"}``."""
    return [{"name": name, **encode_array(arr)} for name, arr in weights.items()]


def decode_weights(obj: Any, max_elements: int | None = None) -> Weights:
    """Rebuild named float32 tensors from :func:`encode_weights`'s list.

    Float16/float64 entries are widened or narrowed to float32 (float16 is an
    allowed downlink encoding).

    Raises:
        WireError: MALFORMED, TOO_LARGE or NON_FINITE, with the tensor's name.
    """
    if not isinstance(obj, list) or not obj:
        raise WireError(RejectReason.MALFORMED, "tensors: expected a non-empty list")
    out: Weights = {}
    budget = max_elements
    for i, entry in enumerate(obj):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not name or len(name) > 256:
            raise WireError(RejectReason.MALFORMED, f"tensors[{i}]: bad name")
        if name in out:
            raise WireError(RejectReason.MALFORMED, f"tensors: duplicate name {name!r}")
        arr = decode_array(entry, f"tensor {name!r}", budget)
        if arr.dtype.kind != "f":
            raise WireError(RejectReason.MALFORMED, f"tensor {name!r}: weights must be floats")
        with np.errstate(over="ignore"):  # float64 overflow is refused just below
            out[name] = arr if arr.dtype == np.float32 else arr.astype(np.float32)
        if arr.dtype.itemsize > 4 and not np.isfinite(out[name]).all():
            raise WireError(RejectReason.NON_FINITE, f"tensor {name!r}: overflows float32")
        if budget is not None:
            budget -= arr.size
    return out


def weights_digest(weights: Mapping[str, npt.NDArray[Any]]) -> str:
    """A short content hash naming one exact set of weights (the model id)."""
    h = hashlib.sha256()
    for name, arr in weights.items():
        a = np.asarray(arr, dtype="<f4")  # not ascontiguousarray: it turns shape () into (1,)
        h.update(f"{name}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def num_elements(weights: Mapping[str, npt.NDArray[Any]]) -> int:
    return int(sum(int(a.size) for a in weights.values()))
