"""Straggler-aware synchronous rounds: late updates carried into the next round.

References:
    Bonawitz et al., "Towards Federated Learning at Scale: System Design", MLSys 2019:
    a round selects 130% of the updates it needs and closes when it has them.
    Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
    AISTATS 2022: an update based on a model ``tau`` versions old is scaled by s(tau).

Over-selection is only a cohort size (``RoundConfig.over_select``, read by
:meth:`coordinator.cohort.CohortPolicy.size`): the round still closes at quorum,
and the agents it asked but did not wait for are late. Without ``carry_late`` their
work is refused as ``stale`` when it arrives. With ``carry_late = L``, an update
trained from round ``b``'s model that arrives when round ``t`` is next to close,
``0 < t - b <= L``, is *carried*: if round ``b`` asked that agent, the agent has not
answered round ``b`` before (each (agent, base round) counts once) and the update's
``model_id`` is round ``b``'s model, it is kept with the FedAvg weight
``samples * s(t - b)`` (s from :mod:`coordinator.staleness`, never below 1, the
aggregator's smallest weight) and added to round ``t``'s aggregate when ``t``
closes. It does not count towards ``t``'s quorum: the quorum counts fresh work on
the current model, so carrying never closes a round on stale updates alone.

Carried updates and the rounds still taking late ones are in every checkpoint (a
checkpoint is written as each one arrives), so ``--resume`` keeps them. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from coordinator import validation
from coordinator.checkpoint import Buffered, Checkpoint, LiveVersion
from coordinator.config import RoundConfig
from coordinator.open_round import OpenRound
from coordinator.staleness import staleness_weight
from coordinator.validation import RunView, check_codec
from protocol import RejectReason, Update, Weights, WireError


def check_stragglers(config: RoundConfig) -> None:
    """Refuse carrying late updates with an aggregate that cannot weigh them.

    Raises:
        ValueError: naming the setting.
    """
    if config.carry_late == 0:
        return
    staleness_weight(config.late_staleness, config.carry_late)  # a bad spec, refused now
    if config.aggregator != "fedavg" or config.dp_noise is not None or config.secagg is not None:
        raise ValueError("--carry-late weighs late updates in FedAvg's sample-weighted mean: "
                         "it cannot run with robust aggregators, DP-FedAvg or SecAgg")


class LateUpdates:
    """The late updates a synchronous run carries, and the rounds that may still send some."""

    def __init__(self, config: RoundConfig, resume: Checkpoint | None = None) -> None:
        check_stragglers(config)
        self._config = config
        self._rounds: dict[int, LiveVersion] = {v.version: v for v in resume.live} if resume else {}
        self._entries: list[Buffered] = list(resume.buffer) if resume else []
        self._folded = 0  # the first ``_folded`` entries are in the open round's aggregate
        #: late updates carried over the run (this process's part of it)
        self.carried_total = 0

    @property
    def pending(self) -> tuple[Buffered, ...]:
        """Carried updates not yet applied by a closed round."""
        return tuple(self._entries)

    def target(self, view: RunView, finished: bool) -> int | None:
        """The round a late update arriving now would join (None: none will close)."""
        if finished or self._config.carry_late == 0:
            return None
        if view.accepting is not None:
            return view.accepting.number
        if view.current is not None and view.current > view.completed:
            return view.current + 1  # closed, evaluating: the next round takes it
        return view.completed + 1

    def is_late(self, update: Update, view: RunView, finished: bool) -> bool:
        target = self.target(view, finished)
        return target is not None and update.round < target

    def checker(self, view: RunView, agent: str, finished: bool) -> Callable[[Update], None]:
        """The round rules for a fresh update, these rules for a late one."""

        def check(update: Update) -> None:
            if self.is_late(update, view, finished):
                self._check_late(view, agent, update, finished)
            else:
                # looked up on the module: the round rules stay one replaceable function
                validation.check_round(self._config, view, agent, update)

        return check

    def _check_late(self, view: RunView, agent: str, update: Update, finished: bool) -> None:
        """Raises WireError: STALE, NOT_IN_COHORT, DUPLICATE, BASE_MISMATCH, BAD_CODEC."""
        target = self.target(view, finished)
        assert target is not None
        base = self._rounds.get(update.round)
        if base is None or target - update.round > self._config.carry_late:
            raise WireError(RejectReason.STALE, f"round {update.round} is too late for "
                            f"round {target} (--carry-late {self._config.carry_late})")
        if agent not in base.cohort:
            raise WireError(RejectReason.NOT_IN_COHORT, f"{agent!r} was not asked in "
                            f"round {update.round}")
        if agent in base.answered:
            raise WireError(RejectReason.DUPLICATE, f"{agent} already answered round "
                            f"{update.round}")
        if update.model_id != base.model_id:
            raise WireError(RejectReason.BASE_MISMATCH, f"trained from {update.model_id[:12]}")
        check_codec(self._config, update)

    def carry(self, update: Update, delta: Weights | None, view: RunView) -> None:
        """Keep a late update :meth:`checker` admitted (a late decline is only counted)."""
        target = self.target(view, finished=False)
        assert target is not None
        base = self._rounds[update.round]
        self._rounds[update.round] = LiveVersion(base.version, base.model_id, base.cohort,
                                                 (*base.answered, update.agent))
        if delta is None:
            return
        weight = staleness_weight(self._config.late_staleness, target - update.round)
        self._entries.append(Buffered(update.agent, update.round, weight, delta, update.samples))
        self.carried_total += 1

    def announced(self, rs: OpenRound, model_id: str) -> None:
        """Round ``rs`` asked its cohort to train ``model_id``: who may answer it late."""
        if self._config.carry_late:
            self._rounds[rs.number] = LiveVersion(rs.number, model_id, tuple(sorted(rs.cohort)))

    def fold(self, rs: OpenRound) -> None:
        """Add the carried updates not yet in ``rs``'s aggregate to it (as ``rs`` closes)."""
        for entry in self._entries[self._folded:]:
            rs.aggregator.add(entry.delta, max(entry.samples * entry.weight, 1.0))
        self._folded = len(self._entries)

    def closed(self, rs: OpenRound) -> dict[str, int] | None:
        """``rs`` is committed: its carried updates are applied, and who answered it is
        fixed; rounds now too old to carry are forgotten. Returns the updates ``rs``
        applied by staleness (its metrics' ``staleness``; None without carrying)."""
        if not self._config.carry_late:
            return None
        taus = Counter(str(rs.number - e.base) for e in self._entries[:self._folded])
        taus["0"] = len(rs.accepted)
        del self._entries[:self._folded]
        self._folded = 0
        if rs.number in self._rounds:
            live = self._rounds[rs.number]
            self._rounds[rs.number] = LiveVersion(live.version, live.model_id, live.cohort,
                                                  tuple(sorted(rs.answered)))
        floor = rs.number + 1 - self._config.carry_late
        self._rounds = {n: v for n, v in self._rounds.items() if n >= floor}
        return dict(sorted(taus.items(), key=lambda kv: int(kv[0])))

    def live(self) -> tuple[LiveVersion, ...]:
        """The rounds late updates may still be based on, for the checkpoint."""
        return tuple(self._rounds[n] for n in sorted(self._rounds))
