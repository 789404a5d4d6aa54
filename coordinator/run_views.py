"""What anyone may read of a run while the round machine drives it (no logic here).

:class:`coordinator.rounds.Rounds` sets these attributes and changes them only
in its handlers; the adapters, the CLI and the tests read them through these
properties, which return copies or immutable values.
"""

from __future__ import annotations

from collections import Counter

from coordinator.cohort import Roster
from coordinator.global_model import GlobalModel
from protocol import Phase, RoundMetrics, Weights


class RunViews:
    """Read-only views of a run's state, for :class:`~coordinator.rounds.Rounds`."""

    _phase: Phase
    _message: str
    _run: str
    _model: GlobalModel
    _completed: int
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
        """The current global model (after the last completed round)."""
        return self._model.weights

    @property
    def completed_rounds(self) -> int:
        return self._completed

    @property
    def history(self) -> tuple[RoundMetrics, ...]:
        return tuple(self._history)

    @property
    def rejected_total(self) -> dict[str, int]:
        return dict(self._rejected_total)

    @property
    def agents_online(self) -> frozenset[str]:
        return frozenset(self._roster.online)
