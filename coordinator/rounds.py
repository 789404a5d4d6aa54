"""The round state machine: events and the time in, actions out.

Rules of this module:
1. Every phase transition of a run lives here (see ``_TRANSITIONS``).
2. It never reads a clock, never touches paho, never sleeps: ``now`` is
   monotonic seconds passed in by the adapter, and ``next_deadline()`` tells the
   adapter when to call back with a :class:`~coordinator.events.Tick`.
3. A rejected message changes nothing but the rejection counters.

A round: draw the cohort -> announce the model (retained) -> accept updates ->
close at quorum, when everyone asked has answered, or at the deadline with
``min_replies`` -> aggregate -> server optimiser step -> evaluate -> publish
metrics -> checkpoint -> announce the next round (or stop: rounds done, target
accuracy reached, or no improvement for ``patience`` rounds).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from typing_extensions import assert_never

from coordinator.aggregate import AggregationError, Aggregator, apply_delta
from coordinator.checkpoint import Checkpoint
from coordinator.config import RoundConfig
from coordinator.events import (
    Action,
    BrokerConnected,
    Evaluate,
    Evaluated,
    Event,
    PresenceArrived,
    RejectUpdate,
    RoundClosed,
    RoundOpened,
    SaveCheckpoint,
    Stop,
    StopRequested,
    Tick,
    UpdateAccepted,
    UpdateArrived,
)
from coordinator.optimisers import OptState, parse_server_opt
from coordinator.privacy import NoisySum, PrivacyLedger
from coordinator.robust import NormClip
from coordinator.sampling import select_cohort
from coordinator.strategy import make_aggregator
from protocol import (
    ClosedBy,
    ModelAnnouncement,
    Phase,
    Presence,
    Publish,
    RejectReason,
    RoundMetrics,
    Status,
    Topics,
    Update,
    Weights,
    WireError,
    decode_delta,
    decode_presence,
    decode_update,
    encode_metrics,
    encode_model,
    encode_status,
    raw_size,
    weights_digest,
)
from protocol.chunks import Reassembler, encode_manifest, is_chunk_frame, split
from protocol.compress import downlink_weights
from protocol.signing import COORDINATOR_SIGNER, Purpose, open_update, seal

_TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.WAITING: frozenset({Phase.TRAINING, Phase.DONE}),
    Phase.TRAINING: frozenset({Phase.TRAINING, Phase.EVALUATING, Phase.DONE, Phase.FAILED}),
    Phase.EVALUATING: frozenset({Phase.TRAINING, Phase.DONE}),
    Phase.DONE: frozenset(),
    Phase.FAILED: frozenset(),
}


@dataclass(slots=True)
class _RoundState:
    """What one open round has gathered so far."""

    number: int
    attempt: int
    opened_at: float
    deadline: float
    deadline_s: float
    expected: frozenset[str]
    quorum: int
    aggregator: Aggregator
    model_payload: bytes
    accepted: set[str]
    declined: set[str]
    rejected: Counter[str]
    bytes_up: int = 0
    bytes_down: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    accuracy_sum: float = 0.0
    accuracy_samples: int = 0
    closed_by: ClosedBy | None = None
    new_weights: Weights | None = None
    #: the server optimiser's state once this round's model is committed
    new_opt_state: OptState | None = None
    #: the cohort size the round asked for (a retry tops the cohort up to it)
    cohort_target: int = 0
    #: every eligible agent online at one of the round's draws: q = cohort / pool for DP
    pool: set[str] = field(default_factory=set)


def _size(publishes: list[Action]) -> int:
    return sum(len(p.payload) for p in publishes if isinstance(p, Publish))


def _finite(value: float | None) -> float | None:
    """A metric as published, or None: agents' reported losses (each finite) can still sum
    to inf, and a diverged model evaluates to inf or NaN, neither of which JSON can carry."""
    return value if value is not None and math.isfinite(value) else None


class Rounds:
    """Drives one federated run. Feed it events with :meth:`handle`."""

    def __init__(
        self,
        config: RoundConfig,
        weights: Weights,
        *,
        run: str,
        wall_offset: float = 0.0,
        resume: Checkpoint | None = None,
    ) -> None:
        """``wall_offset`` turns monotonic ``now`` into Unix time for the wire."""
        self.config = config
        self.topics = Topics(config.job)
        self._wall_offset = wall_offset
        self._online: dict[str, Presence] = {}
        # the ids of _online whose presence says online, kept in step with it: the status
        # after every accepted update counts them, so counting must not cost O(agents)
        self._online_ids: set[str] = set()
        self._rejected_total: Counter[str] = Counter()
        self._history: list[RoundMetrics] = []
        self._completed = 0
        self._run = run
        self._phase = Phase.WAITING
        self._message = ""
        self._round: _RoundState | None = None
        self._server_opt = parse_server_opt(config.server_opt)
        self._opt_state = OptState()
        self._dp_rounds: tuple[tuple[float, float], ...] = ()
        self._chunks = Reassembler(
            config.max_reassembly_bytes,
            ttl_s=max(2 * config.deadline_s, 60.0),
            max_payload_size=config.max_update_bytes,
        )
        if resume is not None:
            if resume.job != config.job or resume.task != config.task:
                raise ValueError(
                    f"checkpoint is for job {resume.job!r} task {resume.task!r}, "
                    f"not job {config.job!r} task {config.task!r}"
                )
            weights, self._run, self._completed = resume.weights, resume.run, resume.round
            self._history = list(resume.history)
            self._rejected_total.update(resume.rejected)
            self._opt_state = self._resumed_opt_state(resume)
            self._dp_rounds = resume.dp_rounds
        self._ledger = (
            PrivacyLedger(config.dp_delta, self._dp_rounds) if config.dp_noise is not None else None
        )
        self._weights = weights
        self._model_id = self._digest(weights)
        self._shapes = {name: tuple(a.shape) for name, a in weights.items()}
        self._raw_update_bytes = raw_size(self._shapes)
        if self._completed >= config.rounds:
            self._phase = Phase.DONE
            self._message = f"already completed {self._completed} rounds"

    # --- read-only views -----------------------------------------------------------

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
        return self._weights

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
        return frozenset(self._online_ids)

    def next_deadline(self) -> float | None:
        """When the adapter must send a :class:`Tick`, or None if nothing is timed."""
        if self._phase is Phase.TRAINING and self._round is not None:
            return self._round.deadline
        return None

    # --- the one entry point ----------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply ``event`` observed at monotonic time ``now``; return what to do, in order."""
        match event:
            case BrokerConnected():
                return self._on_connected(now)
            case PresenceArrived(agent=agent, payload=payload):
                return self._on_presence(agent, payload, now)
            case UpdateArrived(agent=agent, payload=payload):
                return self._on_update(agent, payload, now)
            case Tick():
                return self._on_tick(now)
            case Evaluated(round_no=round_no, metrics=metrics):
                return self._on_evaluated(round_no, metrics, now)
            case StopRequested(reason=reason):
                return self._on_stop(reason, now)
            case _:
                assert_never(event)

    # --- event handlers ---------------------------------------------------------------

    def _on_connected(self, now: float) -> list[Action]:
        # The broker may have restarted without persistence: restore what it retains.
        actions: list[Action] = []
        if self._history:
            last = self._history[-1]
            actions.append(Publish(self.topics.metrics, encode_metrics(last), retain=True))
        if self._round is not None and not self.finished:
            actions.extend(self._model_publishes(self._round.model_payload))
        elif self.finished:  # DONE or FAILED: both ended by publishing the final model
            actions.extend(self._publish_final_model(now))
        actions.append(self._status(now))
        if self.finished:
            actions.append(Stop(self._phase, self._message))
        return actions

    def _on_presence(self, agent: str, payload: bytes, now: float) -> list[Action]:
        if not payload:  # a cleared retained message
            self._online.pop(agent, None)
            self._online_ids.discard(agent)
            return [self._status(now)]
        try:
            presence = decode_presence(payload)
            if presence.agent != agent:
                raise WireError(RejectReason.AGENT_MISMATCH, f"presence names {presence.agent!r}")
        except WireError as exc:
            return [self._reject(agent, None, exc.reason, f"presence: {exc.detail}")]
        self._online[agent] = presence
        if presence.online:
            self._online_ids.add(agent)
        else:
            self._online_ids.discard(agent)
        actions: list[Action] = []
        waiting = self._phase is Phase.WAITING
        if waiting and len(self._eligible(self.agents_online)) >= self.config.min_agents:
            actions.extend(self._open_round(now))
        else:
            actions.append(self._status(now))
        return actions

    def _on_update(self, agent: str, payload: bytes, now: float) -> list[Action]:
        rs = self._round
        if rs is not None and self._phase is Phase.TRAINING:
            rs.bytes_up += len(payload)
        if is_chunk_frame(payload):
            try:
                whole = self._chunks.add(agent, payload, now)
            except WireError as exc:
                round_no = rs.number if rs is not None else None
                return [self._reject(agent, round_no, exc.reason, f"chunk: {exc.detail}")]
            if whole is None:
                return []
            payload = whole
        try:
            update = self._validate(agent, payload)
        except WireError as exc:
            round_no = rs.number if rs is not None else None
            return [self._reject(agent, round_no, exc.reason, exc.detail)]
        assert rs is not None  # _validate guarantees an open round
        if update.declined is not None:
            rs.declined.add(agent)
            return [self._status(now), *self._maybe_close(now)]
        try:
            delta = decode_delta(update.tensors, update.codec, self._shapes)
        except WireError as exc:
            return [self._reject(agent, rs.number, exc.reason, exc.detail)]
        rs.aggregator.add(delta, update.samples)
        rs.accepted.add(agent)
        # Proof of life: after a broker restart the agent's last will (offline) can come
        # before its re-sent update and its new presence; it must stay in the next cohort.
        self._online_ids.add(agent)
        rs.samples += update.samples
        if "loss" in update.metrics:
            rs.loss_sum += update.metrics["loss"] * update.samples
        if "accuracy" in update.metrics:
            rs.accuracy_sum += update.metrics["accuracy"] * update.samples
            rs.accuracy_samples += update.samples
        accepted = UpdateAccepted(agent, rs.number, len(rs.accepted), rs.quorum)
        return [accepted, self._status(now), *self._maybe_close(now)]

    def _on_tick(self, now: float) -> list[Action]:
        rs = self._round
        if self._phase is not Phase.TRAINING or rs is None or now < rs.deadline:
            return []
        if len(rs.accepted) >= self.config.min_replies:
            return self._close(ClosedBy.DEADLINE, now)
        short = (
            f"round {rs.number}: {len(rs.accepted)} of min_replies={self.config.min_replies} "
            f"updates by the deadline"
        )
        return self._short_round(short, now)

    def _on_evaluated(self, round_no: int, metrics: dict[str, float], now: float) -> list[Action]:
        rs = self._round
        if self._phase is not Phase.EVALUATING or rs is None or rs.number != round_no:
            return []  # an evaluation that no longer matters (e.g. stop requested meanwhile)
        return self._finish_round(metrics, now)

    def _on_stop(self, reason: str, now: float) -> list[Action]:
        if self.finished:
            return []
        return self._end(Phase.DONE, f"stopped: {reason}", now)

    # --- validation -------------------------------------------------------------------

    def _validate(self, agent: str, payload: bytes) -> Update:
        """Check everything but the tensors' contents.

        Raises:
            WireError: with the reason the update is refused.
        """
        cfg, rs = self.config, self._round
        if len(payload) > cfg.max_update_bytes:
            raise WireError(
                RejectReason.TOO_LARGE, f"{len(payload)} bytes > {cfg.max_update_bytes}"
            )
        # Verify the bytes as received, then decode what they vouch for (docs/SECURITY.md).
        body = open_update(
            payload,
            job=cfg.job,
            run=self._run,
            agent=agent,
            keys=cfg.agent_keys,
            max_body_bytes=cfg.max_update_bytes,
        )
        update = decode_update(body, cfg.max_update_bytes)
        if update.agent != agent:
            raise WireError(RejectReason.AGENT_MISMATCH, f"payload names {update.agent!r}")
        if update.job != cfg.job:
            raise WireError(RejectReason.WRONG_JOB, f"update for job {update.job!r}")
        if cfg.allowed_agents is not None and agent not in cfg.allowed_agents:
            raise WireError(RejectReason.UNKNOWN_AGENT, f"{agent!r} is not provisioned")
        if rs is None or self._phase is not Phase.TRAINING:
            open_round = rs.number if rs is not None and not self.finished else None
            if update.round <= self._completed or update.round == open_round:
                raise WireError(RejectReason.STALE, f"round {update.round} has closed")
            raise WireError(RejectReason.NO_ROUND, f"no round is open ({self._phase.value})")
        if update.round < rs.number:
            raise WireError(RejectReason.STALE, f"round {update.round} < current {rs.number}")
        if update.round > rs.number:
            raise WireError(RejectReason.FUTURE_ROUND, f"round {update.round} > {rs.number}")
        if agent in rs.accepted or agent in rs.declined:
            raise WireError(RejectReason.DUPLICATE, f"{agent} already answered round {rs.number}")
        if update.model_id != self._model_id:
            raise WireError(RejectReason.BASE_MISMATCH, f"trained from {update.model_id[:12]}")
        self._check_asked(agent, rs)
        if update.declined is None and update.codec != cfg.codec:
            detail = f"codec {update.codec!r}, the round uses {cfg.codec!r}"
            raise WireError(RejectReason.BAD_CODEC, detail)
        return update

    def _check_asked(self, agent: str, rs: _RoundState) -> None:
        """Refuse an agent the round did not ask: never seen online, or not in its cohort.

        Raises:
            WireError: UNKNOWN_AGENT or NOT_IN_COHORT.
        """
        if agent in rs.expected:
            return
        if agent not in self._online_ids:
            raise WireError(RejectReason.UNKNOWN_AGENT, f"{agent!r} never announced presence")
        if self.config.names_cohort:
            raise WireError(RejectReason.NOT_IN_COHORT, f"{agent!r} was not asked in {rs.number}")

    # --- round lifecycle ----------------------------------------------------------------

    def _eligible(self, agents: frozenset[str]) -> frozenset[str]:
        allowed, devices = self.config.allowed_agents, self.config.device_classes
        eligible = agents if allowed is None else agents & allowed
        if devices is None:
            return eligible
        return frozenset(a for a in eligible if self._device(a) in devices)

    def _device(self, agent: str) -> str | None:
        presence = self._online.get(agent)
        return presence.device if presence is not None else None

    def _cohort_size(self, eligible: int) -> int:
        """How many of ``eligible`` agents a round asks: the sampled share, never fewer
        than a round needs to close (``cohort_floor``), never more than there are."""
        cfg = self.config
        if cfg.sample_fraction is not None:
            want = math.ceil(Fraction(str(cfg.sample_fraction)) * eligible)
        elif cfg.sample_count is not None:
            want = cfg.sample_count
        else:
            return eligible
        return min(eligible, max(want, cfg.cohort_floor))

    def _draw(self, candidates: frozenset[str], size: int, number: int, attempt: int
              ) -> frozenset[str]:
        """``size`` of ``candidates``, drawn with the run's seed for this round and attempt."""
        cfg = self.config
        rng = np.random.default_rng([cfg.sample_seed, number, attempt])
        offered = {a: p.samples if (p := self._online.get(a)) else None for a in candidates}
        return select_cohort(offered, size, cfg.sample_policy, rng)

    def _new_aggregator(self, number: int, cohort: int) -> Aggregator:
        cfg = self.config
        if cfg.dp_noise is None or cfg.dp_clip is None:
            return make_aggregator(cfg.aggregator, self._shapes, clip_norm=cfg.clip_norm)
        noisy = NoisySum(self._shapes, clip=cfg.dp_clip, noise_multiplier=cfg.dp_noise,
                         denominator=max(cohort, 1), seed=[cfg.dp_seed, number])
        return NormClip(noisy, cfg.dp_clip)

    def _open_round(self, now: float) -> list[Action]:
        cfg = self.config
        eligible = self._eligible(self.agents_online)
        number = self._completed + 1
        target = self._cohort_size(len(eligible))
        expected = self._draw(eligible, target, number, 0)
        payload = self._announce(number, 0, cfg.deadline_s, now, expected)
        publishes = self._model_publishes(payload)
        quorum = cfg.quorum if cfg.quorum is not None else max(len(expected), cfg.min_replies)
        self._round = _RoundState(
            number=number,
            attempt=0,
            opened_at=now,
            deadline=now + cfg.deadline_s,
            deadline_s=cfg.deadline_s,
            expected=expected,
            quorum=quorum,
            aggregator=self._new_aggregator(number, len(expected)),
            model_payload=payload,
            accepted=set(),
            declined=set(),
            rejected=Counter(),
            bytes_down=_size(publishes) * len(expected),
            cohort_target=target,
            pool=set(eligible),
        )
        self._set_phase(Phase.TRAINING)
        return [
            *publishes,
            RoundOpened(number, 0, len(expected), quorum, cfg.deadline_s),
            self._status(now),
        ]

    def _retry_round(self, now: float) -> list[Action]:
        rs = self._round
        assert rs is not None
        rs.attempt += 1
        rs.deadline_s = self.config.deadline_s * self.config.retry_backoff**rs.attempt
        rs.deadline = now + rs.deadline_s
        eligible = self._eligible(self.agents_online)
        rs.pool |= eligible
        if self.config.names_cohort:
            # top the cohort up to its size with agents not asked yet, in place of those
            # that declined or went offline; silent ones still online may yet answer
            waiting = (rs.expected - rs.accepted - rs.declined) & eligible
            short = rs.cohort_target - len(rs.accepted) - len(waiting)
            newcomers = self._draw(eligible - rs.expected, short, rs.number, rs.attempt)
        else:
            newcomers = eligible - rs.expected
        rs.expected = rs.expected | newcomers
        rs.model_payload = self._announce(rs.number, rs.attempt, rs.deadline_s, now, rs.expected)
        publishes = self._model_publishes(rs.model_payload)
        rs.bytes_down += _size(publishes) * len(rs.expected - rs.accepted)
        self._set_phase(Phase.TRAINING)
        return [
            *publishes,
            RoundOpened(rs.number, rs.attempt, len(rs.expected), rs.quorum, rs.deadline_s),
            self._status(now),
        ]

    def _maybe_close(self, now: float) -> list[Action]:
        rs = self._round
        assert rs is not None
        if len(rs.accepted) >= rs.quorum:
            return self._close(ClosedBy.QUORUM, now)
        answered = rs.accepted | rs.declined
        if rs.expected <= answered and len(rs.accepted) >= self.config.min_replies:
            return self._close(ClosedBy.ALL_REPLIED, now)
        return []

    def _short_round(self, why: str, now: float) -> list[Action]:
        """The deadline passed and the round cannot close: retry it or stop, saying why."""
        rs = self._round
        assert rs is not None
        if self.config.on_short_round == "retry" and rs.attempt < self.config.max_retries:
            self._message = f"{why}; retry {rs.attempt + 1} of {self.config.max_retries}"
            return self._retry_round(now)
        tries = f" after {rs.attempt} retries" if rs.attempt else ""
        return self._end(Phase.FAILED, f"{why}{tries}; stopping", now)

    def _close(self, closed_by: ClosedBy, now: float) -> list[Action]:
        rs = self._round
        assert rs is not None
        try:
            aggregate = rs.aggregator.result()
            change, rs.new_opt_state = self._server_opt.step(self._opt_state, aggregate.delta)
            rs.new_weights = apply_delta(self._weights, change)
        except AggregationError as exc:
            if closed_by is not ClosedBy.DEADLINE:
                return []  # keep gathering: more updates may come before the deadline
            return self._short_round(f"round {rs.number}: {exc}", now)
        rs.closed_by = closed_by
        self._message = ""  # a retry's reason no longer applies
        if not self.config.evaluate:
            return self._finish_round({}, now)
        self._set_phase(Phase.EVALUATING)
        return [self._status(now), Evaluate(rs.number, rs.new_weights)]

    def _finish_round(self, evaluation: dict[str, float], now: float) -> list[Action]:
        rs = self._round
        assert rs is not None and rs.new_weights is not None and rs.closed_by is not None
        assert rs.new_opt_state is not None
        self._weights = rs.new_weights
        self._opt_state = rs.new_opt_state
        self._model_id = self._digest(self._weights)
        self._completed = rs.number
        epsilon = None
        if self._ledger is not None and self.config.dp_noise is not None:
            q = len(rs.expected) / max(len(rs.pool), len(rs.expected), 1)
            epsilon = self._ledger.record(q, self.config.dp_noise)
            self._dp_rounds = tuple(self._ledger.rounds)
        metrics = RoundMetrics(
            job=self.config.job,
            run=self._run,
            round=rs.number,
            closed_by=rs.closed_by,
            accepted=len(rs.accepted),
            declined=len(rs.declined),
            rejected=dict(rs.rejected),
            samples=rs.samples,
            duration_s=now - rs.opened_at,
            bytes_up=rs.bytes_up,
            bytes_down=rs.bytes_down,
            raw_bytes_up=self._raw_update_bytes * len(rs.accepted),
            accuracy=_finite(evaluation.get("accuracy")),
            loss=_finite(evaluation.get("loss")),
            train_loss=_finite(rs.loss_sum / rs.samples if rs.samples else None),
            train_accuracy=_finite(
                rs.accuracy_sum / rs.accuracy_samples if rs.accuracy_samples else None
            ),
            at=now + self._wall_offset,
            epsilon=epsilon,
        )
        self._history.append(metrics)
        # Checkpoint first: a round whose metrics anyone has seen survives a crash.
        actions: list[Action] = [
            SaveCheckpoint(self.checkpoint()),
            Publish(self.topics.metrics, encode_metrics(metrics), retain=True),
            RoundClosed(metrics),
        ]
        target = self.config.target_accuracy
        if self._completed >= self.config.rounds:
            return actions + self._end(Phase.DONE, f"completed {self._completed} rounds", now)
        if target is not None and metrics.accuracy is not None and metrics.accuracy >= target:
            message = f"reached target accuracy {metrics.accuracy:.4f} >= {target} "
            return actions + self._end(Phase.DONE, f"{message}in round {rs.number}", now)
        stalled = self._stalled()
        if stalled is not None:
            return actions + self._end(Phase.DONE, stalled, now)
        return actions + self._open_round(now)

    def _stalled(self) -> str | None:
        """Why the run should stop for lack of progress, or None: ``patience`` evaluated
        rounds in a row whose test accuracy did not beat the best so far by more than
        ``min_delta``. Rounds without an accuracy (no evaluator) neither count nor reset."""
        patience, min_delta = self.config.patience, self.config.min_delta
        if patience is None:
            return None
        best, best_round, since = -math.inf, 0, 0
        for m in self._history:
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
            f"(best {best:.4f} in round {best_round}); stopped after round {self._completed}"
        )

    def _end(self, phase: Phase, message: str, now: float) -> list[Action]:
        self._set_phase(phase)
        self._message = message
        return [*self._publish_final_model(now), self._status(now), Stop(phase, message)]

    # --- outputs ---------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The state to resume from: the model after the last completed round."""
        opt = self._opt_state
        return Checkpoint(
            job=self.config.job,
            run=self._run,
            task=self.config.task,
            round=self._completed,
            weights=self._weights,
            history=tuple(self._history),
            rejected=dict(self._rejected_total),
            strategy_state={k: v for k, v in (("m", opt.m), ("v", opt.v)) if v},
            server_opt=self.config.server_opt,
            server_steps=opt.step,
            dp_rounds=self._dp_rounds,
        )

    def _resumed_opt_state(self, resume: Checkpoint) -> OptState:
        """The server optimiser's state from ``resume``; a different optimiser's moments
        cannot be continued, so that is refused rather than silently reset.

        Raises:
            ValueError: if the checkpoint holds another optimiser's moments.
        """
        state = resume.strategy_state
        if state and parse_server_opt(resume.server_opt) != self._server_opt:
            raise ValueError(
                f"checkpoint holds the state of server optimiser {resume.server_opt!r}, "
                f"not {self.config.server_opt!r}; resume with the same --server-opt"
            )
        return OptState(resume.server_steps, dict(state.get("m", {})), dict(state.get("v", {})))

    def _digest(self, weights: Weights) -> str:
        """The model id: the digest of the weights as agents receive them (``downlink``).

        Agents echo it as their update's base. With an fp16 downlink they train from
        the narrowed model while the round adds their mean delta to the float32 one,
        so the narrowing error never accumulates across rounds.
        """
        return weights_digest(downlink_weights(weights, self.config.downlink))

    def _announce(
        self, number: int, attempt: int, deadline_s: float, now: float, cohort: frozenset[str]
    ) -> bytes:
        """The round's model announcement; it names the cohort when the round asks one."""
        cfg = self.config
        return encode_model(
            ModelAnnouncement(
                job=cfg.job,
                run=self._run,
                round=number,
                attempt=attempt,
                model_id=self._model_id,
                task=cfg.task,
                plan=cfg.plan,
                codec=cfg.codec,
                deadline_s=deadline_s,
                weights=downlink_weights(self._weights, cfg.downlink),
                cohort=tuple(sorted(cohort)) if cfg.names_cohort else None,
                issued_at=now + self._wall_offset,
                max_payload=cfg.max_payload,
            )
        )

    def _model_publishes(self, payload: bytes) -> list[Action]:
        """A model announcement as retained publishes: whole, or its chunks then a manifest.

        The manifest goes last and replaces any whole model retained on the main topic;
        a late agent gets the retained chunks and reassembles the model at once.
        """
        payload = self._sealed(payload)
        parts = split(payload, self.config.max_payload) if self.config.max_payload else None
        if parts is None:
            return [Publish(self.topics.model, payload, retain=True)]
        manifest, frames = parts
        return [
            *(Publish(self.topics.model_chunk(i), f, retain=True) for i, f in enumerate(frames)),
            Publish(self.topics.model, encode_manifest(manifest), retain=True),
        ]

    def _sealed(self, model: bytes) -> bytes:
        """The model signed with the coordinator's key, if it has one; chunked after this.

        Ed25519 is deterministic, so re-sealing a re-published model gives the same bytes.
        """
        key = self.config.signing_key
        if key is None:
            return model
        job, run = self.config.job, self._run
        return seal(model, Purpose.MODEL, job=job, run=run, signer=COORDINATOR_SIGNER, key=key)

    def _publish_final_model(self, now: float) -> list[Action]:
        cfg = self.config
        final = ModelAnnouncement(
            job=cfg.job,
            run=self._run,
            round=max(self._completed, 1),
            model_id=self._model_id,
            task=cfg.task,
            plan=cfg.plan,
            codec=cfg.codec,
            deadline_s=0.0,
            weights=downlink_weights(self._weights, cfg.downlink),
            done=True,
            issued_at=now + self._wall_offset,
            max_payload=cfg.max_payload,
        )
        return self._model_publishes(encode_model(final))

    def _status(self, now: float) -> Publish:
        rs = self._round
        open_round = rs is not None and self._phase in (Phase.TRAINING, Phase.EVALUATING)
        status = Status(
            job=self.config.job,
            run=self._run,
            phase=self._phase,
            round=rs.number if rs is not None and open_round else self._completed,
            rounds=self.config.rounds,
            attempt=rs.attempt if rs is not None and open_round else 0,
            accepted=len(rs.accepted) if rs is not None and open_round else 0,
            quorum=rs.quorum if rs is not None else (self.config.quorum or 0),
            min_replies=self.config.min_replies,
            cohort_size=len(rs.expected) if rs is not None else 0,
            agents_online=len(self._online_ids),
            deadline_at=(
                rs.deadline + self._wall_offset
                if rs is not None and self._phase is Phase.TRAINING
                else None
            ),
            rejected=dict(self._rejected_total),
            at=now + self._wall_offset,
            message=self._message,
        )
        return Publish(self.topics.status, encode_status(status), retain=True)

    def _reject(
        self, agent: str | None, round_no: int | None, reason: RejectReason, detail: str
    ) -> RejectUpdate:
        self._rejected_total[reason.value] += 1
        if self._round is not None and self._phase is Phase.TRAINING:
            self._round.rejected[reason.value] += 1
        return RejectUpdate(agent, round_no, reason, detail)

    def _set_phase(self, phase: Phase) -> None:
        if phase not in _TRANSITIONS[self._phase]:
            raise RuntimeError(f"illegal transition {self._phase.value} -> {phase.value}")
        self._phase = phase
