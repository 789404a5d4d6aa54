"""FedProx's proximal term, read from a plan and applied to a gradient.

FedProx (Li et al., "Federated Optimization in Heterogeneous Networks",
MLSys 2020) adds ``mu/2 * ||w - w_global||^2`` to each agent's local loss, so
local models drift less from the round's global model when agents' data differ
or they run different amounts of work. The coordinator announces ``mu`` in
``TrainPlan.options["mu"]`` (docs/PROTOCOL.md, 4.1); absent means 0, FedAvg.

Invariants: numpy only (both the torch and the numpy trainer read ``mu`` here);
``mu == 0`` leaves every gradient untouched, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from protocol import TrainPlan

#: the plan option holding FedProx's mu
MU = "mu"


def proximal_mu(plan: TrainPlan) -> float:
    """The plan's ``mu``: 0.0 when absent.

    Raises:
        ValueError: for a ``mu`` that is not a finite number >= 0 (the agent then
            declines the round with this message).
    """
    value = plan.options.get(MU, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"plan option {MU!r} must be a number, got {value!r}")
    mu = float(value)
    if not math.isfinite(mu) or mu < 0:
        raise ValueError(f"plan option {MU!r} must be finite and >= 0, got {value!r}")
    return mu


def add_proximal_grad(
    grad: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    w_global: npt.NDArray[np.float32],
    mu: float,
) -> npt.NDArray[np.float32]:
    """``grad + mu * (w - w_global)``: the gradient of the proximal term added in place.

    The term's gradient w.r.t. ``w`` is ``mu * (w - w_global)``; float32 throughout,
    as torch computes it.
    """
    if mu:
        grad += np.float32(mu) * (w - w_global)
    return grad
