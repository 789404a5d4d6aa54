"""What both run machines show their adapters and observers: phase, message, model, history.

The synchronous round machine (:mod:`coordinator.rounds`) and the buffered one
(:mod:`coordinator.buffered`) keep the same run-level state under the same names;
this base class reads it, so the two cannot drift apart in what they report.
"""

from __future__ import annotations

from collections import Counter

from coordinator.global_model import GlobalModel
from coordinator.roster import Roster
from protocol import Phase, RoundMetrics, Weights


class RunViews:
    """Read-only views over the run-level state a machine keeps."""

    _phase: Phase
    _message: str
    _run: str
    _model: GlobalModel
    _history: list[RoundMetrics]
    _rejected_total: Counter[str]
    _roster: Roster

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def finished(self) -> bool:
        return self._phase in (Phase.DONE, Phase.FAILED)

    @property
    def message(self) -> str:
        return self._message

    @property
    def run(self) -> str:
        return self._run

    @property
    def weights(self) -> Weights:
        """The current global model (after the last completed round or server step)."""
        return self._model.weights

    @property
    def history(self) -> tuple[RoundMetrics, ...]:
        return tuple(self._history)

    @property
    def rejected_total(self) -> dict[str, int]:
        return dict(self._rejected_total)

    @property
    def agents_online(self) -> frozenset[str]:
        return frozenset(self._roster.online)
