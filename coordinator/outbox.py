"""Everything the coordinator publishes, encoded: models (signed, chunked), status, metrics.

The round machine decides *what* to say; this module says it on the wire. Pure:
``now`` is monotonic seconds, turned into Unix time with the adapter's
``wall_offset`` only for the timestamps messages carry.
"""

from __future__ import annotations

from collections.abc import Mapping

from coordinator.config import RoundConfig
from coordinator.open_round import OpenRound
from protocol import (
    ModelAnnouncement,
    Phase,
    Publish,
    RoundMetrics,
    Status,
    Topics,
    Weights,
    encode_metrics,
    encode_model,
    encode_status,
    weights_digest,
)
from protocol.chunks import encode_manifest, split
from protocol.compress import downlink_weights
from protocol.secagg.messages import SecAggConfig
from protocol.signing import COORDINATOR_SIGNER, Purpose, seal
from protocol.wire import SECAGG_CODEC


class Outbox:
    """Encodes one job's outgoing messages under its config."""

    def __init__(self, config: RoundConfig, *, wall_offset: float = 0.0) -> None:
        self._config = config
        self.topics = Topics(config.job)
        self._wall_offset = wall_offset

    def wall(self, now: float) -> float:
        """Unix seconds for monotonic ``now``."""
        return now + self._wall_offset

    def model_id(self, weights: Weights) -> str:
        """The model id: the digest of the weights as agents receive them (``downlink``).

        Agents echo it as their update's base. With an fp16 downlink they train from
        the narrowed model while the round adds their mean delta to the float32 one,
        so the narrowing error never accumulates across rounds.
        """
        return weights_digest(downlink_weights(weights, self._config.downlink))

    def announcement(
        self,
        *,
        run: str,
        round_no: int,
        attempt: int,
        deadline_s: float,
        cohort: frozenset[str],
        weights: Weights,
        model_id: str,
        now: float,
        max_staleness: int = 0,
        names_cohort: bool | None = None,
        secagg: SecAggConfig | None = None,
    ) -> bytes:
        """A round's model announcement; it names the cohort when the round asks one
        (``names_cohort`` overrides the config: the buffered mode always names it), and
        always when it is securely aggregated (``secagg``: codec ``secagg``, PROTOCOL.md §14.2)."""
        cfg = self._config
        named = cfg.names_cohort if names_cohort is None else names_cohort
        named = named or secagg is not None
        return encode_model(
            ModelAnnouncement(
                job=cfg.job,
                run=run,
                round=round_no,
                attempt=attempt,
                model_id=model_id,
                task=cfg.task,
                plan=cfg.plan,
                codec=cfg.codec if secagg is None else SECAGG_CODEC,
                deadline_s=deadline_s,
                weights=downlink_weights(weights, cfg.downlink),
                cohort=tuple(sorted(cohort)) if named else None,
                issued_at=self.wall(now),
                max_payload=cfg.max_payload,
                max_staleness=max_staleness,
                secagg=secagg,
            )
        )

    def final_model(
        self, *, run: str, completed: int, weights: Weights, model_id: str, now: float
    ) -> list[Publish]:
        """The run's final model (``done``), retained, for every agent to keep."""
        cfg = self._config
        final = ModelAnnouncement(
            job=cfg.job,
            run=run,
            round=max(completed, 1),
            model_id=model_id,
            task=cfg.task,
            plan=cfg.plan,
            codec=cfg.codec,
            deadline_s=0.0,
            weights=downlink_weights(weights, cfg.downlink),
            done=True,
            issued_at=self.wall(now),
            max_payload=cfg.max_payload,
        )
        return self.model_publishes(encode_model(final), run=run)

    def model_publishes(self, payload: bytes, *, run: str) -> list[Publish]:
        """A model announcement as retained publishes: whole, or its chunks then a manifest.

        The manifest goes last and replaces any whole model retained on the main topic;
        a late agent gets the retained chunks and reassembles the model at once.
        """
        payload = self._sealed(payload, run)
        cap = self._config.max_payload
        parts = split(payload, cap) if cap else None
        if parts is None:
            return [Publish(self.topics.model, payload, retain=True)]
        manifest, frames = parts
        return [
            *(Publish(self.topics.model_chunk(i), f, retain=True) for i, f in enumerate(frames)),
            Publish(self.topics.model, encode_manifest(manifest), retain=True),
        ]

    def _sealed(self, model: bytes, run: str) -> bytes:
        """The model signed with the coordinator's key, if it has one; chunked after this.

        Ed25519 is deterministic, so re-sealing a re-published model gives the same bytes.
        """
        key = self._config.signing_key
        if key is None:
            return model
        job = self._config.job
        return seal(model, Purpose.MODEL, job=job, run=run, signer=COORDINATOR_SIGNER, key=key)

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
        )
        return Publish(self.topics.status, encode_status(status), retain=True)
