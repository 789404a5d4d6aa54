"""The broadcast model: the weights agents hold, and the deltas that move it version by version.

Version ``k`` of a run's broadcast model, ``B_k``, is what its round-``k+1``
announcement names by ``model_id = weights_digest(B_k)`` (docs/PROTOCOL.md §6):
agents train from it and compute their updates against it. The coordinator
keeps its own float32 global model ``G_k`` and moves the broadcast model towards
it with one update-codec step per version (docs/PROTOCOL.md §15)::

    u_k     = G_k - B_(k-1)                        (float32)
    entries = encode_delta(u_k, delta_codec)       (protocol.compress)
    B_k     = narrow(B_(k-1) + decode(entries))    (float32 adds, then the model's dtype)

``G_k - B_k`` is what the codec has not sent yet; it is part of ``u_(k+1)``, so the
error feedback is the subtraction itself: nothing is lost, and ``B`` stays within
one codec step (plus float16 rounding) of ``G`` however many versions pass.

Both ends compute ``B_k`` with :func:`apply_delta`, the same IEEE float32 additions
on the same decoded values, so an agent's copy is the coordinator's bit for bit
and the digest check is exact. Pure: numpy and protocol only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from protocol.codecs.quantise import to_float
from protocol.compress import decode_delta, encode_delta
from protocol.errors import RejectReason, WireError
from protocol.messages import ModelAnnouncement, ModelDelta
from protocol.tensors import Weights, weights_digest

#: the coordinator's ``downlink`` setting -> the broadcast model's wire dtype
DTYPES = {"fp32": "<f4", "fp16": "<f2"}


def narrow(weights: Mapping[str, Any], dtype: str) -> Weights:
    """``weights`` as float32 arrays holding values of ``dtype``: ``<f4`` as they are,
    ``<f2`` rounded to the nearest float16 (saturating at +-65504) and widened back."""
    if dtype not in DTYPES.values():
        raise ValueError(f"broadcast dtype must be one of {sorted(DTYPES.values())}, got {dtype!r}")
    out: Weights = {}
    for name, arr in weights.items():
        x = np.asarray(arr, dtype=np.float32)
        out[name] = x if dtype == "<f4" else to_float(x, "<f2").astype(np.float32)
    return out


def apply_delta(
    base: Mapping[str, Any], entries: Sequence[Mapping[str, Any]], codec: str, dtype: str
) -> Weights:
    """The version a delta leads to: ``narrow(base + decode(entries), dtype)``.

    The entries are checked against ``base``'s names and shapes exactly as an
    update's are against the model's (docs/PROTOCOL.md §7).

    Raises:
        WireError: BAD_CODEC, TENSOR_MISMATCH, MALFORMED, TOO_LARGE or NON_FINITE
            from decoding; NON_FINITE if a sum overflows float32; MALFORMED for an
            unknown ``dtype``.
    """
    if dtype not in DTYPES.values():
        raise WireError(RejectReason.MALFORMED, f"delta: dtype {dtype!r}")
    shapes = {name: tuple(np.shape(arr)) for name, arr in base.items()}
    change = decode_delta(entries, codec, shapes)
    summed: Weights = {}
    with np.errstate(over="ignore"):  # an overflow is refused just below
        for name, arr in base.items():
            summed[name] = np.add(np.asarray(arr, dtype=np.float32), change[name],
                                  dtype=np.float32)
    if not all(np.isfinite(a).all() for a in summed.values()):
        raise WireError(RejectReason.NON_FINITE, "delta: base + delta overflows float32")
    return narrow(summed, dtype)


def encode_step(
    broadcast: Weights,
    target: Mapping[str, Any],
    codec: str,
    dtype: str,
    rng: np.random.Generator | None = None,
) -> tuple[list[dict[str, Any]], Weights]:
    """One version's delta entries towards ``target``, and the version they lead to.

    ``rng`` drives a stochastic codec (``qsgd``). The next version is computed with
    the receivers' own :func:`apply_delta`, so it is what every agent will hold.

    Raises:
        ValueError: for a bad codec, or a non-finite target.
    """
    change = {
        name: np.subtract(np.asarray(target[name], dtype=np.float32), arr, dtype=np.float32)
        for name, arr in broadcast.items()
    }
    if not all(np.isfinite(a).all() for a in change.values()):
        raise ValueError("the global model holds NaN or Inf")
    entries = encode_delta(change, codec, rng)
    try:
        return entries, apply_delta(broadcast, entries, codec, dtype)
    except WireError as exc:  # only at float32's very edge, e.g. steps near 3e38
        raise ValueError(f"the encoded delta does not decode: {exc}") from None


def as_announcement(delta: ModelDelta, weights: Weights) -> ModelAnnouncement:
    """The announcement ``delta`` stands for, holding ``weights`` (the version it names)."""
    return ModelAnnouncement(
        job=delta.job,
        run=delta.run,
        round=delta.round,
        model_id=delta.model_id,
        task=delta.task,
        plan=delta.plan,
        codec=delta.codec,
        deadline_s=delta.deadline_s,
        weights=weights,
        attempt=delta.attempt,
        cohort=delta.cohort,
        done=delta.done,
        issued_at=delta.issued_at,
        max_payload=delta.max_payload,
        delta_codec=delta.delta_codec,
        secagg=delta.secagg,
        cohort_hash=delta.cohort_hash,
    )


def check_digest(weights: Weights, model_id: str, what: str) -> Weights:
    """``weights`` if they hash to ``model_id``.

    Raises:
        WireError: DIGEST_MISMATCH otherwise: a wrong model, never to be trained on.
    """
    got = weights_digest(weights)
    if got != model_id:
        raise WireError(RejectReason.DIGEST_MISMATCH, f"{what} hashes to {got}, not {model_id}")
    return weights


#: the stochastic-codec key of the coordinator's deltas, as agents key theirs by their id
_COORDINATOR_KEY = int.from_bytes(hashlib.sha256(b"coordinator").digest()[:8], "big")


def delta_rng(seed: int, version: int) -> np.random.Generator:
    """The generator of version ``version``'s delta (the round that produced it):
    ``default_rng([seed, version, key])``, reproducible after a resume."""
    return np.random.default_rng([seed, version, _COORDINATOR_KEY])
