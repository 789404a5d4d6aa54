"""Update codecs: how an agent's weight delta is written into an update.

A codec is named by a spec string announced in the round's model message, so
every agent of a round uses the same one. ``none`` sends raw little-endian
float32; ``fp16`` halves that. Decoding checks every entry against the shapes
the receiver expects before it allocates anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from protocol.errors import RejectReason, WireError
from protocol.tensors import Weights, decode_array, encode_array

Shapes = Mapping[str, tuple[int, ...]]

_WIRE_DTYPE = {"none": np.dtype("<f4"), "fp16": np.dtype("<f2")}
CODECS = tuple(_WIRE_DTYPE)


def check_codec(spec: str) -> str:
    """Return ``spec`` if this build can encode it.

    Raises:
        ValueError: for an unknown spec (a local configuration mistake).
    """
    if spec not in _WIRE_DTYPE:
        raise ValueError(f"unknown codec {spec!r}; choose one of {', '.join(CODECS)}")
    return spec


def encode_delta(delta: Weights, spec: str) -> list[dict[str, Any]]:
    """Write ``delta`` with codec ``spec`` as the update's tensor entries."""
    dtype = _WIRE_DTYPE[check_codec(spec)]
    return [{"name": name, **encode_array(arr.astype(dtype))} for name, arr in delta.items()]


def decode_delta(entries: Sequence[Mapping[str, Any]], spec: str, shapes: Shapes) -> Weights:
    """Rebuild the float32 delta from an update's entries.

    Raises:
        WireError: BAD_CODEC for an unknown spec or an entry the codec did not
            write; TENSOR_MISMATCH for names or shapes that differ from
            ``shapes``; MALFORMED or NON_FINITE from the array decoder.
    """
    dtype = _WIRE_DTYPE.get(spec)
    if dtype is None:
        raise WireError(RejectReason.BAD_CODEC, f"unknown codec {spec!r}")
    names = [e.get("name") for e in entries]
    if names != list(shapes):
        detail = f"tensor names {names[:4]}... != model's {list(shapes)[:4]}..."
        raise WireError(RejectReason.TENSOR_MISMATCH, detail)
    out: Weights = {}
    for entry in entries:
        name = str(entry["name"])
        if entry.get("dtype") != dtype.str:
            raise WireError(
                RejectReason.BAD_CODEC, f"{name}: dtype {entry.get('dtype')!r} under codec {spec}"
            )
        shape = entry.get("shape")
        if not isinstance(shape, list | tuple):
            raise WireError(RejectReason.MALFORMED, f"{name}: shape must be a list")
        if tuple(shape) != shapes[name]:
            raise WireError(
                RejectReason.TENSOR_MISMATCH,
                f"{name}: shape {entry.get('shape')} != {list(shapes[name])}",
            )
        out[name] = decode_array(entry, f"tensor {name!r}").astype(np.float32)
    return out


def raw_size(shapes: Shapes) -> int:
    """Bytes the delta would take as raw float32: the baseline for ratios."""
    return 4 * sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
