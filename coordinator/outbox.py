"""Everything the coordinator publishes, encoded: models and their deltas (signed, chunked),
status, metrics.

The round machine decides *what* to say; this module says it on the wire. Pure:
``now`` is monotonic seconds, turned into Unix time with the adapter's
``wall_offset`` only for the timestamps messages carry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.broadcast import Version
from coordinator.config import RoundConfig
from coordinator.open_round import OpenRound
from protocol import (
    ModelAnnouncement,
    ModelDelta,
    Phase,
    Publish,
    RollCall,
    RoundMetrics,
    Status,
    Topics,
    encode_metrics,
    encode_model,
    encode_model_delta,
    encode_rollcall,
    encode_status,
)
from protocol.broadcast import DTYPES
from protocol.chunks import encode_manifest, split
from protocol.compress import downlink_weights
from protocol.partial import Verdict, encode_verdict
from protocol.secagg.messages import SecAggConfig
from protocol.signing import COORDINATOR_SIGNER, Purpose, seal
from protocol.wire import SECAGG_CODEC


@dataclass(frozen=True, slots=True)
class Announced:
    """An announcement's publishes, in order, and the bytes of each topic family."""

    publishes: tuple[Publish, ...]
    #: the whole model's publishes (``model``, ``model/chunk/{i}``)
    whole_bytes: int
    #: the delta's or notice's (``delta``, ``delta/chunk/{i}``)
    delta_bytes: int


class Outbox:
    """Encodes one job's outgoing messages under its config."""

    def __init__(self, config: RoundConfig, *, wall_offset: float = 0.0) -> None:
        self._config = config
        self.topics = Topics(config.job)
        self._wall_offset = wall_offset

    def wall(self, now: float) -> float:
        """Unix seconds for monotonic ``now``."""
        return now + self._wall_offset

    def announcement(
        self,
        *,
        run: str,
        round_no: int,
        attempt: int,
        deadline_s: float,
        cohort: frozenset[str] | None,
        version: Version,
        now: float,
        done: bool = False,
        max_staleness: int = 0,
        names_cohort: bool | None = None,
        secagg: SecAggConfig | None = None,
        roll_call: tuple[str, ...] = (),
    ) -> Announced:
        """One announcement of ``version``: the whole model retained on ``model`` (signed,
        chunked), then its delta, or a notice that it travels whole, on ``delta``
        (docs/PROTOCOL.md §15.2). It names the cohort when the round asks one
        (``names_cohort`` overrides the config: the buffered mode always names it), and
        always when it is securely aggregated (``secagg``: codec ``secagg``, PROTOCOL.md §14.2);
        ``roll_call`` names the agents called on to announce themselves (PROTOCOL.md §16.2)."""
        cfg = self._config
        named = cfg.names_cohort if names_cohort is None else names_cohort
        named = named or secagg is not None
        header: dict[str, Any] = {
            "job": cfg.job,
            "run": run,
            "round": round_no,
            "attempt": attempt,
            "model_id": version.model_id,
            "task": cfg.task,
            "plan": cfg.plan,
            "codec": cfg.codec if secagg is None else SECAGG_CODEC,
            "deadline_s": deadline_s,
            "cohort": tuple(sorted(cohort)) if cohort is not None and named else None,
            "done": done,
            "issued_at": self.wall(now),
            "max_payload": cfg.max_payload,
            "max_staleness": max_staleness,
            "secagg": secagg,
            "roll_call": roll_call,
            # a hashed round (PROTOCOL.md §17) names no one; the final model asks no one
            "cohort_hash": None if done or secagg is not None else cfg.cohort_hash,
        }
        model = ModelAnnouncement(
            **header,
            # B is a float16 model already under an fp16 downlink: the narrowing is exact
            weights=downlink_weights(version.weights, cfg.downlink),
            delta_codec=cfg.downlink_delta,
        )
        delta = ModelDelta(
            **header,
            base_id=version.base_id,
            delta_codec=cfg.downlink_delta,
            dtype=DTYPES[cfg.downlink],
            tensors=version.entries,
        )
        whole = self._retained(encode_model(model), run, Purpose.MODEL)
        deltas = self._retained(encode_model_delta(delta), run, Purpose.DELTA)
        size = sum(len(p.payload) for p in whole)
        return Announced((*whole, *deltas), size, sum(len(p.payload) for p in deltas))

    def final_model(self, *, run: str, completed: int, version: Version, now: float) -> Announced:
        """The run's final model (``done``), retained, for every agent to keep."""
        return self.announcement(
            run=run, round_no=max(completed, 1), attempt=0, deadline_s=0.0, cohort=None,
            version=version, now=now, done=True,
        )

    def _retained(self, payload: bytes, run: str, purpose: Purpose) -> list[Publish]:
        """A model or delta as retained publishes: whole, or its chunks then a manifest.

        The manifest goes last and replaces any whole message retained on the main topic;
        a late agent gets the retained chunks and reassembles the message at once.
        """
        payload = self._sealed(payload, run, purpose)
        main, chunk = (
            (self.topics.model, self.topics.model_chunk)
            if purpose is Purpose.MODEL
            else (self.topics.delta, self.topics.delta_chunk)
        )
        cap = self._config.max_payload
        parts = split(payload, cap) if cap else None
        if parts is None:
            return [Publish(main, payload, retain=True)]
        manifest, frames = parts
        return [
            *(Publish(chunk(i), f, retain=True) for i, f in enumerate(frames)),
            Publish(main, encode_manifest(manifest), retain=True),
        ]

    def _sealed(self, body: bytes, run: str, purpose: Purpose) -> bytes:
        """``body`` signed with the coordinator's key, if it has one; chunked after this.

        Ed25519 is deterministic, so re-sealing a re-published model gives the same bytes.
        """
        key = self._config.signing_key
        if key is None:
            return body
        job = self._config.job
        return seal(body, purpose, job=job, run=run, signer=COORDINATOR_SIGNER, key=key)

    def rollcall(self, *, run: str, now: float) -> Publish:
        """Ask every agent connected to announce itself now (not retained: only those
        connected answer, and agents connecting later announce themselves anyway)."""
        call = RollCall(job=self._config.job, run=run, at=self.wall(now))
        return Publish(self.topics.rollcall, encode_rollcall(call), retain=False)

    def verdict(self, verdict: Verdict) -> Publish:
        """The answer to one partial aggregate, to its aggregator alone, not retained."""
        body = self._sealed(encode_verdict(verdict), verdict.run, Purpose.VERDICT)
        return Publish(self.topics.verdict(verdict.aggregator), body, retain=False)

    def metrics(self, metrics: RoundMetrics) -> Publish:
        """A round's metrics, retained: the last one is what a newcomer sees first."""
        return Publish(self.topics.metrics, encode_metrics(metrics), retain=True)

    def status(
        self,
        *,
        run: str,
        phase: Phase,
        last_round: OpenRound | None,
        completed: int,
        agents_online: int,
        rejected: Mapping[str, int],
        message: str,
        now: float,
        mode: str = "sync",
    ) -> Publish:
        """The job's live state, retained. ``last_round`` is the round announced last
        (None before round 1); its progress shows while it is open (training, evaluating)."""
        cfg, rs = self._config, last_round
        is_open = rs is not None and phase in (Phase.TRAINING, Phase.EVALUATING)
        live = rs if is_open else None
        status = Status(
            job=cfg.job,
            run=run,
            phase=phase,
            round=live.number if live is not None else completed,
            rounds=cfg.rounds,
            attempt=live.attempt if live is not None else 0,
            accepted=len(live.accepted) if live is not None else 0,
            quorum=rs.quorum if rs is not None else (cfg.quorum or 0),
            min_replies=cfg.min_replies,
            cohort_size=len(rs.cohort) if rs is not None else 0,
            agents_online=agents_online,
            deadline_at=(
                self.wall(rs.deadline) if rs is not None and phase is Phase.TRAINING else None
            ),
            rejected=dict(rejected),
            at=self.wall(now),
            message=message,
            mode=mode,
        )
        return Publish(self.topics.status, encode_status(status), retain=True)


class StatusPacer:
    """When the status may go out: at once for a phase change, else at most once per
    ``interval_s``; a change held back is due at the end of the interval (the round
    machine wakes for it), so the status is never more than ``interval_s`` stale."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._sent_at = -math.inf
        #: when a held-back status must go out (None: nothing held back)
        self.due: float | None = None

    def sent(self, now: float) -> None:
        self._sent_at, self.due = now, None

    def may_send(self, now: float) -> bool:
        """True if a change may be published now; otherwise it is held back until ``due``."""
        if now - self._sent_at >= self.interval_s:
            return True
        if self.due is None:
            self.due = self._sent_at + self.interval_s
        return False

    def ready(self, now: float) -> bool:
        """Whether a held-back status is due."""
        return self.due is not None and now >= self.due
