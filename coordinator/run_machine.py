"""What both run machines share: the views they give adapters and observers (phase,
message, model, history), what they publish again on every (re)connect, and how a run
halts (resumable) or ends (with the final model).

The synchronous round machine (:mod:`coordinator.rounds`) and the buffered one
(:mod:`coordinator.buffered`) keep the same run-level state under the same names;
this base class reads it, so the two cannot drift apart in what they report or how they stop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable

from coordinator.events import Action, Stop
from coordinator.global_model import GlobalModel
from coordinator.outbox import Outbox, StatusPacer
from coordinator.phases import Trigger
from coordinator.roster import Roster
from protocol import Phase, Publish, RoundMetrics, Weights


class RunMachine(ABC):
    """The run-level state a machine keeps, its views, and what every run does with it."""

    _outbox: Outbox
    _pacer: StatusPacer

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
        """This coordinator's work is over: the run ended, or the operator stopped it."""
        return self._phase in (Phase.DONE, Phase.FAILED, Phase.STOPPED)

    @property
    def ended(self) -> bool:
        """The run itself is over (done or failed): nothing can resume it."""
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

    @abstractmethod
    def _status(self, now: float) -> Publish:
        """The run's status document (docs/PROTOCOL.md §4.4), as a retained publish."""

    def _status_soon(self, now: float) -> list[Action]:
        """The status after a change that is not a phase change, at most every
        ``status_interval_s`` (a Tick publishes one held back), however many arrive."""
        return [self._status(now)] if self._pacer.may_send(now) else []

    def _status_due(self, now: float) -> list[Action]:
        """The status held back by :meth:`_status_soon`, once it is due (on a Tick)."""
        return [self._status(now)] if self._pacer.ready(now) else []

    @abstractmethod
    def _final_model(self, now: float) -> list[Action]:
        """The final model's publishes, for a run that has ended."""

    @abstractmethod
    def _fire(self, trigger: Trigger) -> None:
        """Move to the phase ``trigger`` leads to, by the machine's transition table."""

    def _halt(self, reason: str, progress: str, now: float) -> list[Action]:
        """An operator's stop is not the end of the run: no final model, agents wait, and
        ``--resume`` continues from the last checkpoint (``progress`` says how far it got)."""
        self._fire(Trigger.HALT)
        self._message = f"stopped ({reason}) after {progress}: resumable"
        return [self._status(now), Stop(self._phase, self._message)]

    def _end(self, trigger: Trigger, message: str, now: float) -> list[Action]:
        """The run is over (``trigger`` FINISH or FAIL): the final model goes out, retained."""
        self._fire(trigger)
        self._message = message
        return [*self._final_model(now), self._status(now), Stop(self._phase, message)]

    def _reconnected(self, live: Iterable[Publish], now: float) -> list[Action]:
        """What to publish on (re)connecting: the broker may have restarted without
        persistence, so everything it should retain again (the last metrics, the ``live``
        round's announcements, or the final model), the status, and a roll call (who is
        online?); a finished machine says so and stops instead."""
        actions: list[Action] = [self._outbox.metrics(self._history[-1])] if self._history else []
        if not self.finished:
            actions.extend(live)
        elif self.ended:  # DONE or FAILED: both ended by publishing the final model
            actions.extend(self._final_model(now))
        actions.append(self._status(now))
        if self.finished:
            return [*actions, Stop(self._phase, self._message)]
        return [*actions, self._outbox.rollcall(run=self._run, now=now)]
