"""Update codecs: how an agent's weight delta is written into an update, and read back.

The coordinator names a codec pipeline by a spec string in the round's model
announcement (grammar in :mod:`protocol.codecs.spec`), so every agent of a round
uses the same one: ``none``, ``fp16``, ``int8[:block]``, ``qsgd[:levels[,block]]``,
``topk[:fraction]``, optionally ``+zstd[:level]``, e.g. ``qsgd:1+zstd:19`` or
``topk:0.01+int8+zstd``.

One entry per tensor, in model order, each with its ``name`` and ``shape``:

* ``none``/``fp16`` (dense floats): ``{"name", "dtype", "shape", "data"}``, the
  layout of :func:`protocol.tensors.encode_array`;
* dense ``int8``/``qsgd``: ``{"name", "shape", "q", "scale"}``;
* ``topk`` + floats: ``{"name", "shape", "idx", "val"}``; ``topk`` + integers:
  ``{"name", "shape", "idx", "q", "scale"}``;
* ``+zstd`` replaces the whole list by one ``{"zstd", "size"}`` entry.

Error bounds per element (proved in docs/CODECS.md, checked by property tests):
``none`` exact; ``fp16`` <= 2**-11 |x| + 2**-25 for |x| <= 65504 (saturates
beyond); ``int8`` <= step/2 and ``qsgd`` < step (unbiased), up to float32
rounding of the product, where step = max(block peak / levels, 2**-126);
``topk`` leaves each dropped x_i with error |x_i| <= the smallest kept |x|,
kept values as their quantiser; ``zstd`` lossless.

Invariants: encoding is deterministic given the rng; decoding checks the spec,
every entry's names, shapes, dtypes, counts, index ranges, steps and declared
sizes before it allocates the tensor, and raises only WireError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.codecs import entropy
from protocol.codecs.indices import MAX_NUMEL, decode_indices, encode_indices
from protocol.codecs.quantise import block_count, dequantise, quantise, to_float
from protocol.codecs.spec import STAGES, Pipeline, parse_codec
from protocol.errors import RejectReason, WireError
from protocol.tensors import Weights, decode_array, encode_array

Shapes = Mapping[str, tuple[int, ...]]

#: the stage names a spec is built from (for CLI help)
CODECS = tuple(STAGES)
#: how the coordinator may send the global model
DOWNLINKS = ("fp32", "fp16")


def check_codec(spec: str) -> str:
    """Return ``spec`` if this build can encode it.

    Raises:
        ValueError: for a spec outside the grammar, or a zstd stage without
            a zstd binding (a local configuration mistake).
    """
    if parse_codec(spec).zstd_level is not None:
        entropy.check_available()
    return spec


def codec_pipeline(spec: str) -> Pipeline:
    """The parsed pipeline (``lossless``, ``stochastic``) for ``spec``.

    Raises:
        ValueError: as :func:`check_codec`.
    """
    return parse_codec(check_codec(spec))


def encode_delta(
    delta: Weights, spec: str, rng: np.random.Generator | None = None
) -> list[dict[str, Any]]:
    """Write ``delta`` with codec ``spec`` as the update's tensor entries.

    ``rng`` drives stochastic rounding (``qsgd``); pass one seeded per agent
    and round so noise is independent across agents yet reproducible. Without
    one, a generator seeded 0 is used.

    Raises:
        ValueError: for a bad spec, or NaN/Inf under a codec that cannot carry
            them (``none`` and ``fp16`` carry them; the receiver rejects them).
    """
    pipe = codec_pipeline(spec)
    if pipe.stochastic and rng is None:
        rng = np.random.default_rng(0)
    entries = [_encode_tensor(name, arr, pipe, rng) for name, arr in delta.items()]
    if pipe.zstd_level is not None:
        return [entropy.wrap(entries, pipe.zstd_level)]
    return entries


def _encode_tensor(
    name: str, arr: Any, pipe: Pipeline, rng: np.random.Generator | None
) -> dict[str, Any]:
    x = np.asarray(arr, dtype=np.float32)
    dtype = pipe.quantiser.float_dtype
    if pipe.topk is None and dtype is not None:
        return {"name": name, **encode_array(to_float(x, dtype))}
    flat = x.reshape(-1)  # (n,)
    fields: dict[str, Any] = {}
    if pipe.topk is not None:
        if not np.isfinite(flat).all():
            raise ValueError(f"{name}: top-k cannot rank NaN or Inf")
        if flat.size > MAX_NUMEL:
            raise ValueError(f"{name}: {flat.size} elements are too many to sparsify")
        k = pipe.kept(flat.size)
        idx = np.zeros(0, dtype=np.int64)  # (k,) increasing
        if k:
            idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
        fields["idx"] = encode_indices(idx)
        flat = flat[idx]  # (k,) the kept values, in index order
    fields.update(quantise(flat, pipe.quantiser, rng))
    return {"name": name, "shape": list(x.shape), **fields}


def decode_delta(entries: Sequence[Mapping[str, Any]], spec: str, shapes: Shapes) -> Weights:
    """Rebuild the float32 delta from an update's entries.

    Raises:
        WireError: BAD_CODEC for an unknown spec or an entry the codec did not
            write (wrong fields, dtypes, counts, indices, levels or steps);
            TENSOR_MISMATCH for names or shapes that differ from ``shapes``;
            TOO_LARGE for a zstd payload beyond what the model could need;
            MALFORMED or NON_FINITE from the array decoders.
    """
    try:
        pipe = parse_codec(spec)
    except ValueError as exc:
        raise WireError(RejectReason.BAD_CODEC, f"codec {spec!r}: {exc}") from None
    if pipe.zstd_level is not None:
        entries = entropy.unwrap(entries, max_inner_size(pipe, shapes))
    names = [e.get("name") for e in entries]
    if names != list(shapes):
        detail = f"tensor names {names[:4]}... != model's {list(shapes)[:4]}..."
        raise WireError(RejectReason.TENSOR_MISMATCH, detail)
    out: Weights = {}
    for entry in entries:
        name = str(entry["name"])
        out[name] = _decode_tensor(entry, pipe, shapes[name], name)
    return out


def _decode_tensor(
    entry: Mapping[str, Any], pipe: Pipeline, expected: tuple[int, ...], name: str
) -> npt.NDArray[np.float32]:
    dtype = pipe.quantiser.float_dtype
    if pipe.topk is None and dtype is not None and entry.get("dtype") != dtype:
        detail = f"{name}: dtype {entry.get('dtype')!r}, the codec writes {dtype}"
        raise WireError(RejectReason.BAD_CODEC, detail)
    shape = entry.get("shape")
    if not isinstance(shape, list | tuple):
        raise WireError(RejectReason.MALFORMED, f"{name}: shape must be a list")
    if tuple(shape) != tuple(expected):
        raise WireError(
            RejectReason.TENSOR_MISMATCH, f"{name}: shape {list(shape)} != {list(expected)}"
        )
    if pipe.topk is None and dtype is not None:
        # finite float16 and float32 stay finite as float32; float32 is not copied
        return decode_array(entry, f"tensor {name!r}").astype(np.float32, copy=False)
    numel = int(np.prod(expected, dtype=np.int64))
    kept = pipe.kept(numel)
    idx = decode_indices(entry.get("idx"), kept, numel, name) if pipe.topk is not None else None
    values = dequantise(entry, pipe.quantiser, kept, name)  # (kept,) float32
    if idx is None:
        return values.reshape(expected)
    dense = np.zeros(numel, dtype=np.float32)
    dense[idx] = values
    return dense.reshape(expected)


def max_inner_size(pipe: Pipeline, shapes: Shapes) -> int:
    """An upper bound on the msgpack entry list ``pipe`` writes for ``shapes``.

    Per tensor: 4 bytes a value (float32 at most), 5 per index varint, 4 per
    step, the name (<= 4 bytes a character in UTF-8), 9 per dimension, and 256
    for keys and headers. A zstd frame claiming more is refused unopened.
    """
    total = 16
    for name, shape in shapes.items():
        numel = int(np.prod(shape, dtype=np.int64))
        kept = pipe.kept(numel)
        block = pipe.quantiser.block or max(kept, 1)
        index_bytes = 5 * kept if pipe.topk is not None else 0
        total += 4 * kept + index_bytes + 4 * block_count(kept, block)
        total += 4 * len(name) + 9 * len(shape) + 256
    return total


def downlink_weights(weights: Weights, downlink: str) -> Weights:
    """The global model as announced: ``fp32`` as is, ``fp16`` narrowed (saturating).

    The receiver's :func:`protocol.tensors.decode_weights` widens float16 back to
    float32, so each weight is off by at most 2**-11 of itself (2**-25 near zero).

    Raises:
        ValueError: for a downlink other than those in :data:`DOWNLINKS`.
    """
    if downlink not in DOWNLINKS:
        raise ValueError(f"downlink must be one of {DOWNLINKS}, got {downlink!r}")
    if downlink == "fp32":
        return weights
    return {name: to_float(np.asarray(a, dtype=np.float32), "<f2") for name, a in weights.items()}


def raw_size(shapes: Shapes) -> int:
    """Bytes the delta would take as raw float32: the baseline for ratios."""
    return 4 * sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
