"""When a run ends after a round: all rounds done, the target accuracy reached, or no progress.

Pure: a function of the config and the metrics history alone, so a resumed run
stops exactly where an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from coordinator.config import RoundConfig
from protocol import RoundMetrics


def stop_reason(config: RoundConfig, history: Sequence[RoundMetrics]) -> str | None:
    """Why the run should end now that ``history[-1]`` closed, or None to go on."""
    if not history:
        return None
    last = history[-1]
    if last.round >= config.rounds:
        return f"completed {last.round} rounds"
    target = config.target_accuracy
    if target is not None and last.accuracy is not None and last.accuracy >= target:
        return f"reached target accuracy {last.accuracy:.4f} >= {target} in round {last.round}"
    return _stalled(config, history)


def _stalled(config: RoundConfig, history: Sequence[RoundMetrics]) -> str | None:
    """``patience`` evaluated rounds in a row whose test accuracy did not beat the best so
    far by more than ``min_delta``. Rounds without an accuracy (no evaluator) neither count
    nor reset."""
    patience, min_delta = config.patience, config.min_delta
    if patience is None:
        return None
    best, best_round, since = -math.inf, 0, 0
    for m in history:
        if m.accuracy is None:
            continue
        if m.accuracy > best + min_delta:
            best, best_round, since = m.accuracy, m.round, 0
        else:
            since += 1
    if since < patience:
        return None
    return (
        f"no improvement in accuracy above {min_delta:g} for {patience} rounds "
        f"(best {best:.4f} in round {best_round}); stopped after round {history[-1].round}"
    )
