"""A recorded run: every message a real round machine and its agents put on the wire.

The coordinator side is the real :class:`coordinator.Rounds` fed real encoded
presence and updates, so the status, metrics and model payloads are exactly
what a broker would carry. No broker, no clock, no threads: the clock is a
float that moves one millisecond per event, so every status has its own ``at``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from coordinator import (
    Action,
    Evaluate,
    Evaluated,
    Event,
    PresenceArrived,
    RoundConfig,
    Rounds,
)
from coordinator import UpdateArrived as CoordUpdate
from protocol import (
    Presence,
    Publish,
    Topics,
    Update,
    decode_model,
    encode_delta,
    encode_presence,
    encode_update,
)

JOB = "watch"
RUN = "run1"
#: turns the recording's monotonic clock into Unix time, as the coordinator's adapter does
WALL_OFFSET = 1_700_000_000.0
STEP_S = 0.001
#: a monitor time after the whole recording
LATER = WALL_OFFSET + 100.0


@dataclass
class Recording:
    """Messages in publish order as (topic, payload, retain), plus the truth to check against."""

    core: Rounds
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    accuracy: dict[int, float] = field(default_factory=dict)
    now: float = 0.0

    def retained(self) -> list[tuple[str, bytes, bool]]:
        """What a broker retains at the end: the last retained payload per topic."""
        last: dict[str, bytes] = {}
        for topic, payload, retain in self.messages:
            if retain:
                last[topic] = payload
        return [(t, p, True) for t, p in last.items() if p]

    def on(self, suffix: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t.endswith(suffix)]


def record_run(
    rounds: int = 3,
    agents: int = 3,
    job: str = JOB,
    run: str = RUN,
    observe: Callable[[Action], None] | None = None,
) -> Recording:
    """A full run; in round 2 the first agent's update arrives twice (a QoS 1 duplicate).

    ``observe`` sees every action, as a coordinator's ``on_action`` observer does.
    """
    weights = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    config = RoundConfig(job=job, task="toy", rounds=rounds, min_agents=agents, deadline_s=30.0,
                         status_interval_s=0.0)  # a status for every change
    core = Rounds(config, weights, run=run, wall_offset=WALL_OFFSET)
    topics = Topics(job)
    rec = Recording(core)
    names = [f"agent-{i}" for i in range(agents)]

    def feed(event: Event) -> None:
        rec.now += STEP_S
        for action in core.handle(event, rec.now):
            if observe is not None:
                observe(action)
            if isinstance(action, Publish):
                rec.messages.append((action.topic, action.payload, action.retain))
            elif isinstance(action, Evaluate):
                acc = round(0.5 + action.round_no / 10, 4)
                rec.accuracy[action.round_no] = acc
                feed(Evaluated(action.round_no, {"accuracy": acc, "loss": 1.0 / action.round_no}))

    for name in names:
        payload = encode_presence(
            Presence(name, True, samples=10, trainer="numpy", at=WALL_OFFSET + rec.now)
        )
        rec.messages.append((topics.presence(name), payload, True))
        feed(PresenceArrived(name, payload))
    for round_no in range(1, rounds + 1):
        model = decode_model(rec.on("/model")[-1])
        assert model.round == round_no
        for i, name in enumerate(names):
            delta = {k: np.full(v.shape, 0.01 * (i + 1), np.float32) for k, v in weights.items()}
            update = encode_update(
                Update(job, name, round_no, model.model_id, samples=10, codec="none",
                       tensors=tuple(encode_delta(delta, "none")), metrics={"loss": 0.5})
            )
            rec.messages.append((topics.update(name), update, False))
            feed(CoordUpdate(name, update))
            if round_no == 2 and i == 0:
                feed(CoordUpdate(name, update))
    return rec


def presence_payload(agent: str, online: bool, at: float) -> bytes:
    return encode_presence(Presence(agent, online, samples=10, trainer="numpy", at=at))
