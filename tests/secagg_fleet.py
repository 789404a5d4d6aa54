"""A pure SecAgg fleet: one coordinator session and N agent sessions wired back to back.

Messages travel through the real encoders and decoders; a list plays the broker
and a float the clock. An agent listed in ``drop[phase]`` goes silent from that
phase on (it never sends that phase's message), which is how the tests kill
agents "at every phase". Randomness is seeded, so every run is reproducible.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from coordinator.config import SecAggPolicy
from coordinator.secagg import (
    PhaseClosed,
    SecAggAction,
    SecAggDone,
    SecAggFailed,
    SecAggRejected,
    SecAggRound,
)
from edge_agent.secagg import SecAggClient
from protocol import Publish, WireError
from protocol.secagg.fixedpoint import RingSpec, choose_frac_bits, encode_input, signed
from protocol.secagg.messages import SecAggConfig, SecAggPhase, Session
from protocol.secagg.shamir import RandomBytes
from protocol.secagg.wire import decode_down
from protocol.tensors import Weights
from protocol.topics import Topics

SHAPES: dict[str, tuple[int, ...]] = {"w": (3, 4), "b": (4,)}
SESSION = Session("job", "run-1", 1, 0)


def seeded(seed: int | list[int]) -> RandomBytes:
    """A deterministic stand-in for ``os.urandom``."""
    return np.random.default_rng(seed).bytes


def deltas_for(agents: list[str], seed: int = 0, scale: float = 0.1) -> dict[str, Weights]:
    rng = np.random.default_rng(seed)
    return {a: {n: (rng.standard_normal(s) * scale).astype(np.float32) for n, s in SHAPES.items()}
            for a in agents}


def ring_for(n: int, bits: int = 32, clip: float = 1.0, weight_max: int = 100) -> RingSpec:
    return RingSpec(bits, choose_frac_bits(bits, clip, weight_max, n), clip, weight_max, n)


def input_rng(agent: str) -> np.random.Generator:
    """The stochastic-rounding draws of ``agent``: the oracle replays them exactly."""
    return np.random.default_rng([7, int.from_bytes(agent.encode(), "big") % 2**32])


def plain_sum(deltas: Mapping[str, Weights], samples: Mapping[str, int], ring: RingSpec
              ) -> np.ndarray:
    """The oracle: the plain fixed-point sum of the same encoded inputs, as signed integers."""
    inputs = [signed(encode_input(deltas[a], samples[a], ring, input_rng(a)), ring)
              for a in sorted(deltas)]
    return np.sum(inputs, axis=0)


@dataclass
class Outcome:
    done: SecAggDone | None
    failed: SecAggFailed | None
    rejected: list[SecAggRejected] = field(default_factory=list)
    closed: list[PhaseClosed] = field(default_factory=list)
    #: coordinator messages an agent refused, with why
    refused: list[tuple[str, WireError]] = field(default_factory=list)
    coordinator: SecAggRound | None = None


@dataclass
class SecAggFleet:
    agents: list[str]
    ring: RingSpec
    policy: SecAggPolicy = field(default_factory=SecAggPolicy)
    quorum: int | None = None
    min_inputs: int = 2
    seed: int = 0
    shapes: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(SHAPES))
    now: float = 0.0
    #: every message the coordinator held, by agent: what a curious coordinator sees
    seen: dict[str, list[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics = Topics(SESSION.job)
        config = SecAggConfig(self.ring, self.policy.keys_s)
        self.coordinator = SecAggRound(
            SESSION, self.ring, self.policy, frozenset(self.agents), self.shapes,
            now=0.0, keys_deadline=self.policy.keys_s, masked_deadline=60.0,
            quorum=self.quorum if self.quorum is not None else len(self.agents),
            min_inputs=self.min_inputs, random_bytes=seeded([self.seed, 999]),
        )
        self.clients = {a: SecAggClient(SESSION, a, config, seeded([self.seed, i]))
                        for i, a in enumerate(self.agents)}

    def run(self, deltas: Mapping[str, Weights], samples: Mapping[str, int],
            drop: Mapping[SecAggPhase, set[str]] | None = None) -> Outcome:
        """One whole session; agents in ``drop[phase]`` fall silent from that phase on."""
        drop = drop or {}
        order = [SecAggPhase.KEYS, SecAggPhase.SHARES, SecAggPhase.MASKED, SecAggPhase.UNMASK]
        silent_from = {a: p for p in reversed(order) for a in drop.get(p, set())}
        out = Outcome(None, None, coordinator=self.coordinator)
        queue: deque[tuple[str, bytes]] = deque()

        def alive(agent: str, phase: SecAggPhase) -> bool:
            gone = silent_from.get(agent)
            return gone is None or order.index(phase) < order.index(gone)

        def send(agent: str, payload: bytes | None, phase: SecAggPhase) -> None:
            if payload is not None and alive(agent, phase):
                queue.append((agent, payload))

        self._alive = alive

        for agent, client in self.clients.items():
            send(agent, client.advertise(), SecAggPhase.KEYS)
            if agent in deltas:  # training finishes before the relay: the input waits
                send(agent, client.set_input(deltas[agent], samples[agent], input_rng(agent)),
                     SecAggPhase.MASKED)
        while not self.coordinator.finished:
            if queue:
                agent, payload = queue.popleft()
                self.seen.setdefault(agent, []).append(payload)
                actions = self.coordinator.handle(agent, payload, self.now)
            else:
                deadline = self.coordinator.next_deadline()
                assert deadline is not None
                self.now = max(self.now, deadline)
                actions = self.coordinator.tick(self.now)
            self._carry_out(actions, out, send)
        return out

    def _carry_out(self, actions: list[SecAggAction], out: Outcome, send) -> None:  # type: ignore[no-untyped-def]
        for action in actions:
            match action:
                case Publish(topic=topic, payload=payload):
                    message = decode_down(payload)
                    targets = (self.agents if topic == self.topics.secagg_down
                               else [topic.rsplit("/", 1)[1]])
                    phase = {"secagg_roster": SecAggPhase.SHARES,
                             "secagg_relay": SecAggPhase.MASKED,
                             "secagg_survivors": SecAggPhase.UNMASK}[_kind(payload)]
                    for agent in targets:
                        if not self._alive(agent, phase):
                            continue  # a dead agent hears nothing
                        try:
                            send(agent, self.clients[agent].receive(message), phase)
                        except WireError as exc:
                            out.refused.append((agent, exc))
                case SecAggRejected():
                    out.rejected.append(action)
                case PhaseClosed():
                    out.closed.append(action)
                case SecAggDone():
                    out.done = action
                case SecAggFailed():
                    out.failed = action


def _kind(payload: bytes) -> str:
    from protocol.peek import peek_fields

    kind: str = peek_fields(payload, ("type",))["type"]
    return kind
