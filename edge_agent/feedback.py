"""Error feedback: what a lossy codec did not send stays on the device and joins the next delta.

Each round the agent encodes ``u = delta + residual`` and keeps
``residual' = u - decode(encode(u))``, computed with the receiver's own decoder.
Summed over rounds, what the coordinator decoded plus the residual left here
equals the sum of the true deltas (to float32 rounding), so top-k and
deterministic rounding delay information instead of losing it. Unbiased codecs
(``qsgd`` alone) lose nothing on average and keep no residual.

References: Seide et al., "1-Bit Stochastic Gradient Descent" (Interspeech 2014);
Stich, Cordonnier and Jaggi, "Sparsified SGD with Memory" (NeurIPS 2018);
Karimireddy et al., "Error Feedback Fixes SignSGD" (ICML 2019).

Invariants: numpy and protocol only; no clock, no threads. A residual belongs
to one run (its ``scope``) and one set of tensor shapes; anything else starts
from zero. Files are touched only by :func:`save_residual` and
:func:`load_residual`, which the adapter calls: an :mod:`protocol.statefile`
document of type ``residual`` with a ``scope`` field, written atomically and
durably, never pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol import Weights, WireError, decode_delta, encode_delta
from protocol.compress import codec_pipeline
from protocol.statefile import load_doc, save_doc

_VERSION = 1
_RESIDUAL = "residual"


@dataclass(frozen=True, slots=True)
class Residual:
    """The unsent part of this agent's updates so far, for the run named ``scope``."""

    scope: str
    tensors: Weights


class ErrorFeedback:
    """Holds one agent's residual and applies it around the codec."""

    def __init__(self, state: Residual | None = None) -> None:
        self._state = state

    @property
    def state(self) -> Residual | None:
        """The current residual (replaced, never mutated, by :meth:`encode`)."""
        return self._state

    def encode(
        self,
        delta: Weights,
        spec: str,
        *,
        scope: str,
        rng: np.random.Generator | None = None,
    ) -> list[dict[str, Any]]:
        """Encode ``delta`` plus the carried residual with codec ``spec``; keep the new residual.

        Only a biased codec (top-k, deterministic rounding) keeps a residual; a
        lossless or unbiased one (``qsgd``) sends any carried residual and leaves none.

        Raises:
            ValueError: for a bad spec, or a non-finite delta (the residual is unchanged).
        """
        pipe = codec_pipeline(spec)
        carried = self._carried(delta, scope)
        total = delta if carried is None else {n: delta[n] + carried[n] for n in delta}
        if not all(np.isfinite(a).all() for a in total.values()):
            raise ValueError("the delta holds NaN or Inf")
        entries = encode_delta(total, spec, rng)
        if not pipe.biased:
            self._state = None
            return entries
        shapes = {name: tuple(a.shape) for name, a in delta.items()}
        try:
            sent = decode_delta(entries, spec, shapes)
        except WireError as exc:  # only at float32's very edge, e.g. steps near 3e38
            raise ValueError(f"the encoded delta does not decode: {exc}") from None
        self._state = Residual(scope, {n: (total[n] - sent[n]).astype(np.float32) for n in total})
        return entries

    def _carried(self, delta: Weights, scope: str) -> Weights | None:
        state = self._state
        if state is None or state.scope != scope:
            return None
        same = [(n, a.shape) for n, a in state.tensors.items()] == [
            (n, np.shape(a)) for n, a in delta.items()
        ]
        return state.tensors if same else None


def save_residual(path: Path, state: Residual | None) -> None:
    """Atomically replace ``path`` with ``state``; ``None`` removes the file."""
    if state is None:
        path.unlink(missing_ok=True)
        return
    save_doc(path, _RESIDUAL, _VERSION, state.tensors, {"scope": state.scope})


def load_residual(path: Path) -> Residual | None:
    """Read what :func:`save_residual` wrote; ``None`` if there is no file.

    Raises:
        ValueError: for a file that is not a residual of this version, or corrupt.
    """
    loaded = load_doc(path, _RESIDUAL, _VERSION)
    if loaded is None:
        return None
    doc, tensors = loaded
    scope = doc.get("scope")
    if not isinstance(scope, str):
        raise ValueError(f"{path}: residual without a scope")
    return Residual(scope, tensors)
