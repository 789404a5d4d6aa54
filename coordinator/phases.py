"""Every phase transition of a run, in one table: (phase, trigger) -> next phase.

As h11 keeps its ``EVENT_TRIGGERED_TRANSITIONS`` in ``_state.py``, this module is
the whole answer to "how can a run move?"; the round machine
(:mod:`coordinator.rounds`) names a trigger and :func:`next_phase` says where it
leads. A pair not in the table is a bug in the machine, never a peer's fault.
"""

from __future__ import annotations

import enum

from protocol import Phase


class Trigger(enum.Enum):
    """What moves a run from one phase to the next (see ``_TRANSITIONS``)."""

    #: enough eligible agents are online: round 1 is announced
    OPEN = "open"
    #: the deadline passed short of ``min_replies``: the round is announced again
    RETRY = "retry"
    #: the round closed and its model awaits server-side evaluation
    EVALUATE = "evaluate"
    #: a round is committed and the next one announced
    NEXT = "next"
    #: a round closed while agents are being recounted (coordinator.roster, rule 5)
    WAIT = "wait"
    #: the run ends well: rounds done, target reached, or stalled
    FINISH = "finish"
    #: a short round has no retries left
    FAIL = "fail"
    #: the operator stopped the coordinator: the run stays resumable, nothing is final
    HALT = "halt"


_TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    (Phase.WAITING, Trigger.OPEN): Phase.TRAINING,
    (Phase.WAITING, Trigger.FINISH): Phase.DONE,
    (Phase.TRAINING, Trigger.RETRY): Phase.TRAINING,
    (Phase.TRAINING, Trigger.EVALUATE): Phase.EVALUATING,
    (Phase.TRAINING, Trigger.NEXT): Phase.TRAINING,  # closed without evaluation
    (Phase.TRAINING, Trigger.FINISH): Phase.DONE,
    (Phase.TRAINING, Trigger.FAIL): Phase.FAILED,
    (Phase.EVALUATING, Trigger.NEXT): Phase.TRAINING,
    (Phase.TRAINING, Trigger.WAIT): Phase.WAITING,
    (Phase.EVALUATING, Trigger.WAIT): Phase.WAITING,
    (Phase.EVALUATING, Trigger.FINISH): Phase.DONE,
    (Phase.WAITING, Trigger.HALT): Phase.STOPPED,
    (Phase.TRAINING, Trigger.HALT): Phase.STOPPED,
    (Phase.EVALUATING, Trigger.HALT): Phase.STOPPED,
}


def next_phase(phase: Phase, trigger: Trigger) -> Phase:
    """Where ``trigger`` leads from ``phase``.

    Raises:
        RuntimeError: for a transition the table does not allow (a bug).
    """
    try:
        return _TRANSITIONS[phase, trigger]
    except KeyError:
        raise RuntimeError(f"illegal transition: {trigger.value} in phase {phase.value}") from None
