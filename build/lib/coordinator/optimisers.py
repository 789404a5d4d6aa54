"""Server optimisers: how the round's aggregated delta moves the global model.

References:
    Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar and McMahan,
    "Adaptive Federated Optimization", ICLR 2021, Algorithm 2 (FedAdagrad,
    FedAdam, FedYogi) and its FedAvgM baseline (Hsu, Qi and Brown,
    arXiv:1909.06335, 2019).

The aggregator (plain FedAvg, a robust one, or the DP sum) gives the round's
delta ``Δ_t = aggregate(local - global)``: a pseudo-gradient pointing downhill.
With ``m_{-1} = 0`` and ``v_{-1} = τ²`` (the paper's ``v_{-1} ≥ τ²``, at its bound):

- ``fedavg``:     ``x_{t+1} = x_t + Δ_t`` (no state; the default)
- ``fedavgm``:    ``m_t = β m_{t-1} + Δ_t``; ``x_{t+1} = x_t + η m_t``
- ``fedadagrad``: ``m_t = β1 m_{t-1} + (1-β1) Δ_t``; ``v_t = v_{t-1} + Δ_t²``
- ``fedadam``:    ``m_t`` as above; ``v_t = β2 v_{t-1} + (1-β2) Δ_t²``
- ``fedyogi``:    ``m_t`` as above; ``v_t = v_{t-1} - (1-β2) Δ_t² sign(v_{t-1} - Δ_t²)``

and for the adaptive three ``x_{t+1} = x_t + η m_t / (√v_t + τ)``, with no bias
correction, as in the paper. A step is a pure function of (state, delta) that
returns a new state: the round machine keeps the old one until the round's
model is committed, so a round that fails after aggregating leaves no trace.
The arithmetic is float64, the state kept float32 (as checkpoints store it),
so a resumed run computes the same bits as one never interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from protocol import Weights

F64 = npt.NDArray[np.float64]

OPTIMISERS = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi")

#: each kind's parameters and their defaults (Reddi et al.'s β1, β2, τ; η per kind)
_DEFAULTS: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedavgm": {"lr": 1.0, "momentum": 0.9},
    "fedadagrad": {"lr": 0.1, "b1": 0.9, "tau": 1e-3},
    "fedadam": {"lr": 0.01, "b1": 0.9, "b2": 0.99, "tau": 1e-3},
    "fedyogi": {"lr": 0.01, "b1": 0.9, "b2": 0.99, "tau": 1e-3},
}

SERVER_OPT_HELP = (
    "how the aggregated delta moves the model: fedavg (x += delta; the default) | "
    "fedavgm[:lr=1,momentum=0.9] | fedadagrad[:lr=0.1,b1=0.9,tau=1e-3] | "
    "fedadam[:lr=0.01,b1=0.9,b2=0.99,tau=1e-3] | fedyogi[:lr=0.01,b1=0.9,b2=0.99,tau=1e-3] "
    "(Reddi et al. 2021; docs/STRATEGIES.md)"
)


@dataclass(frozen=True, slots=True)
class OptState:
    """A server optimiser's state between rounds: first and second moments, steps taken."""

    step: int = 0
    m: Weights = field(default_factory=dict)
    v: Weights = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ServerOptSpec:
    """A parsed ``--server-opt`` spec."""

    kind: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.0
    b1: float = 0.0
    b2: float = 0.0
    tau: float = 0.0

    def step(self, state: OptState, delta: Weights) -> tuple[Weights, OptState]:
        """The change to apply to the model for ``delta``, and the state after this round.

        Never mutates ``state`` or ``delta``.
        """
        if self.kind == "fedavg":
            return delta, OptState(step=state.step + 1)
        f64 = {name: d.astype(np.float64) for name, d in delta.items()}
        m_prev = {n: _get(state.m, n, d) for n, d in f64.items()}
        if self.kind == "fedavgm":
            m = {n: self.momentum * m_prev[n] + d for n, d in f64.items()}
            m32 = _f32(m)
            step = {n: (self.lr * m32[n].astype(np.float64)).astype(np.float32) for n in m32}
            return step, OptState(step=state.step + 1, m=m32)
        b1, b2, tau = self.b1, self.b2, self.tau
        m32 = _f32({n: b1 * m_prev[n] + (1 - b1) * d for n, d in f64.items()})
        v_prev = {n: _get(state.v, n, d, fill=tau * tau) for n, d in f64.items()}
        sq = {n: d * d for n, d in f64.items()}
        if self.kind == "fedadagrad":
            v = {n: v_prev[n] + sq[n] for n in sq}
        elif self.kind == "fedadam":
            v = {n: b2 * v_prev[n] + (1 - b2) * sq[n] for n in sq}
        else:  # fedyogi: parse_server_opt admits nothing else
            v = {n: v_prev[n] - (1 - b2) * sq[n] * np.sign(v_prev[n] - sq[n]) for n in sq}
        v32 = _f32(v)
        step = {
            n: (self.lr * m32[n].astype(np.float64) / (np.sqrt(v32[n].astype(np.float64)) + tau))
            .astype(np.float32)
            for n in m32
        }
        return step, OptState(step=state.step + 1, m=m32, v=v32)


def _get(moments: Weights, name: str, like: F64, fill: float = 0.0) -> F64:
    """A stored moment in float64, or its initial value (``fill``) before the first step."""
    if name in moments:
        return moments[name].astype(np.float64)
    return np.full(like.shape, fill, np.float64)


def _f32(arrays: dict[str, F64]) -> Weights:
    return {n: a.astype(np.float32) for n, a in arrays.items()}


def _param(kind: str, spec: str, item: str) -> tuple[str, float]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or key not in _DEFAULTS[kind]:
        allowed = ", ".join(_DEFAULTS[kind]) or "none"
        raise ValueError(f"server optimiser {spec!r}: {key!r} is not a parameter of {kind} "
                         f"(allowed: {allowed})")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"server optimiser {spec!r}: {key}={text!r} is not a number") from None
    return key, value


def parse_server_opt(spec: str) -> ServerOptSpec:
    """Parse ``kind[:key=value,...]``, e.g. ``fedadam:lr=0.01,b1=0.9,b2=0.99,tau=1e-3``.

    Raises:
        ValueError: for an unknown kind, an unknown parameter or one out of range.
    """
    kind, _, rest = spec.strip().partition(":")
    if kind not in _DEFAULTS:
        raise ValueError(f"unknown server optimiser {spec!r}; choose one of: {SERVER_OPT_HELP}")
    params = dict(_DEFAULTS[kind])
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, value = _param(kind, spec, item)
        params[key] = value
    if not 0 < params.get("lr", 1.0) < float("inf"):
        raise ValueError(f"server optimiser {spec!r}: lr must be > 0")
    for key in ("momentum", "b1", "b2"):
        if key in params and not 0 <= params[key] < 1:
            raise ValueError(f"server optimiser {spec!r}: {key} must be in [0, 1)")
    if "tau" in params and not 0 < params["tau"] < float("inf"):
        raise ValueError(f"server optimiser {spec!r}: tau must be > 0")
    return ServerOptSpec(kind, **params)
