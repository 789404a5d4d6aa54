"""``python -m fedmq_tools.bench.soak``: every decoder and both cores, fed mutated, random bytes.

Targets, each seeded with valid payloads and fed byte-level mutations (flips,
sets, inserts, deletes, truncations, splices), field-level mutations (a decoded
document with a value replaced or removed, re-encoded) and random bytes:

- ``decode_model``, ``decode_update``, ``decode_presence``, ``decode_status``,
  ``decode_metrics`` and chunk frames (``decode_frame``, a ``Reassembler``);
- ``decode_delta`` for every codec stage (entries mutated as msgpack);
- the round machine (:class:`coordinator.Rounds`): ``UpdateArrived`` (whole
  updates and single chunk frames of a chunked one) and ``PresenceArrived``;
- the agent core: ``ModelArrived``.

What counts as a failure:

- a crash: any exception but ``WireError`` from a decoder, or any exception at
  all from a core (the adapters would log it as a bug);
- a wrong acceptance: an update the round machine accepted that an independent
  check refuses (wrong agent, job, round, base model or codec; tensors that do
  not decode to finite float32 of the model's shapes; a second one per agent);
- a changed model: each batch of round-machine cases ends at the deadline, and
  the new model must equal the initial one plus the sample-weighted mean of the
  accepted deltas, computed independently with ``np.average`` (bit for bit the
  initial one when nothing was accepted).

Invariants: no broker, no threads, no clock (time is a counter); seeded, so a
run is reproducible from ``--seed``.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from coordinator import (
    MessageRejected,
    PresenceArrived,
    RoundConfig,
    Rounds,
    Tick,
    UpdateAccepted,
    UpdateArrived,
)
from edge_agent.agent import AgentCore, ModelArrived
from fedmq_tools.bench.mutations import mutate
from protocol import (
    ClosedBy,
    ModelAnnouncement,
    Phase,
    Presence,
    RoundMetrics,
    Status,
    TrainPlan,
    Update,
    Weights,
    WireError,
    decode_delta,
    decode_metrics,
    decode_model,
    decode_presence,
    decode_status,
    decode_update,
    encode_delta,
    encode_metrics,
    encode_model,
    encode_presence,
    encode_status,
    encode_update,
    weights_digest,
)
from protocol.chunks import Reassembler, decode_frame, split

JOB = "soak"
#: big enough that a raw update (1.6 kB) travels in chunks under the smallest cap, 1 KiB
SHAPES: dict[str, tuple[int, ...]] = {"w": (16, 24), "b": (24,), "s": ()}
#: one pipeline per codec stage and layout
CODEC_SPECS = (
    "none", "fp16", "int8:block=16", "qsgd:8", "topk:0.25", "topk:0.25+int8", "zstd",
    "topk:0.5+qsgd:4+zstd",
)
AGENTS = tuple(f"a{k}" for k in range(12))
#: round-machine cases per batch (a fresh machine, one round, closed at the deadline)
BATCH = 400
#: the first few crashes are kept with their tracebacks
KEEP_CRASHES = 5


@dataclass
class Tally:
    """What a soak saw, per target and in total."""

    cases: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    crash_reports: list[str] = field(default_factory=list)
    wrongly_accepted: int = 0
    model_changed: int = 0
    batches: int = 0
    updates_accepted: int = 0

    def crash(self, target: str, payload: bytes) -> None:
        self.crashes += 1
        if len(self.crash_reports) < KEEP_CRASHES:
            self.crash_reports.append(f"{target} on {payload[:64]!r}...:\n{traceback.format_exc()}")

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.wrongly_accepted or self.model_changed)


# --- seeds ------------------------------------------------------------------------------------


def initial_weights(seed: int) -> Weights:
    rng = np.random.default_rng([seed, 1])
    return {n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in SHAPES.items()}


def update_payload(agent: str, model_id: str, codec: str, seed: int) -> bytes:
    """A valid update of ``agent`` for round 1."""
    rng = np.random.default_rng([seed, int(agent[1:])])
    delta = {n: rng.normal(0, 0.01, s).astype(np.float32) for n, s in SHAPES.items()}
    update = Update(job=JOB, agent=agent, round=1, model_id=model_id, samples=10 + int(agent[1:]),
                    codec=codec, tensors=tuple(encode_delta(delta, codec, rng)),
                    metrics={"loss": 0.5})
    return encode_update(update)


def message_seeds(seed: int) -> dict[str, bytes]:
    """One valid payload of every message kind."""
    weights = initial_weights(seed)
    model = ModelAnnouncement(job=JOB, run="run1", round=1, model_id=weights_digest(weights),
                              task="soak", plan=TrainPlan(), codec="none", deadline_s=10.0,
                              weights=weights, cohort=AGENTS[:3], issued_at=1.0)
    status = Status(job=JOB, run="run1", phase=Phase.TRAINING, round=1, rounds=3, attempt=0,
                    accepted=1, quorum=3, min_replies=1, cohort_size=3, agents_online=3,
                    deadline_at=11.0, rejected={"stale": 1}, at=1.0, message="")
    metrics = RoundMetrics(job=JOB, run="run1", round=1, closed_by=ClosedBy.QUORUM, accepted=3,
                           declined=0, rejected={}, samples=30, duration_s=1.0, bytes_up=10,
                           bytes_down=10, raw_bytes_up=10, accuracy=0.5, loss=1.0)
    return {
        "model": encode_model(model),
        "update": update_payload("a0", model.model_id, "none", seed),
        "presence": encode_presence(Presence(agent="a0", online=True, samples=10, at=1.0)),
        "status": encode_status(status),
        "metrics": encode_metrics(metrics),
    }


# --- targets ----------------------------------------------------------------------------------

Decoder = Callable[[bytes], object]

DECODERS: dict[str, tuple[Decoder, bool]] = {
    "model": (decode_model, False),
    "update": (decode_update, False),
    "presence": (decode_presence, True),
    "status": (decode_status, True),
    "metrics": (decode_metrics, True),
}


def fuzz_decoder(name: str, decode: Decoder, payload: bytes, tally: Tally) -> None:
    """Only WireError may escape a decoder."""
    tally.cases[name] += 1
    try:
        decode(payload)
    except WireError as exc:
        tally.outcomes[f"{name}:{exc.reason.value}"] += 1
        return
    except Exception:
        tally.crash(name, payload)
        return
    tally.outcomes[f"{name}:decoded"] += 1


def fuzz_delta(spec: str, payload: bytes, tally: Tally) -> None:
    """Mutated codec entries: WireError, or finite float32 tensors of the model's shapes."""
    target = f"delta[{spec}]"
    tally.cases[target] += 1
    try:
        entries = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception:  # not msgpack: decode_update refuses it before decode_delta sees it
        tally.outcomes[f"{target}:not_msgpack"] += 1
        return
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        # decode_update refuses these before decode_delta sees them (its contract)
        tally.outcomes[f"{target}:not_a_list_of_maps"] += 1
        return
    try:
        delta = decode_delta(entries, spec, SHAPES)
    except WireError as exc:
        tally.outcomes[f"{target}:{exc.reason.value}"] += 1
        return
    except Exception:
        tally.crash(target, payload)
        return
    sound = {n: a.shape for n, a in delta.items()} == SHAPES and all(
        a.dtype == np.float32 and np.isfinite(a).all() for a in delta.values()
    )
    if not sound:
        tally.wrongly_accepted += 1
    tally.outcomes[f"{target}:decoded"] += 1


def fuzz_chunk(payload: bytes, reassembler: Reassembler, now: float, tally: Tally) -> None:
    tally.cases["chunk"] += 1
    try:
        decode_frame(payload, 1 << 20)
        reassembler.add("a0", payload, now)
    except WireError as exc:
        tally.outcomes[f"chunk:{exc.reason.value}"] += 1
        return
    except Exception:
        tally.crash("chunk", payload)
        return
    tally.outcomes["chunk:taken"] += 1


def fuzz_agent(payload: bytes, tally: Tally) -> None:
    """A fresh agent core per case: a mutated model is refused or, if valid, trained."""
    tally.cases["agent"] += 1
    core = AgentCore(JOB, "a0", samples=10, trainer="soak")
    try:
        actions = core.handle(ModelArrived(payload), 1.0)
    except Exception:
        tally.crash("agent", payload)
        return
    kinds = sorted({type(a).__name__ for a in actions}) or ["ignored"]
    tally.outcomes[f"agent:{'+'.join(kinds)}"] += 1


class RoundsBatch:
    """One round of a fresh round machine, fed mutated updates and presences, then closed."""

    def __init__(self, seed: int, codec: str, chunked: bool) -> None:
        self.weights = initial_weights(seed)
        self.codec = codec
        config = RoundConfig(job=JOB, task="soak", rounds=1, codec=codec, quorum=10**6,
                             min_agents=len(AGENTS), deadline_s=10.0, on_short_round="stop",
                             evaluate=False)
        self.rounds = Rounds(config, {n: a.copy() for n, a in self.weights.items()}, run="run1")
        for agent in AGENTS:
            presence = Presence(agent=agent, online=True, samples=10)
            self.rounds.handle(PresenceArrived(agent, encode_presence(presence)), 0.0)
        self.model_id = weights_digest(self.weights)
        self.seeds = {a: update_payload(a, self.model_id, codec, seed) for a in AGENTS}
        self.frames: dict[str, list[bytes]] = {}
        for agent, payload in self.seeds.items():
            parts = split(payload, 1024) if chunked else None  # None: small enough whole
            self.frames[agent] = parts[1] if parts is not None else []
        self.accepted: dict[str, bytes] = {}
        self.now = 0.0

    def feed(self, rng: random.Random, tally: Tally) -> None:
        agent = rng.choice(AGENTS)
        self.now += 0.001
        if rng.random() < 0.15:
            presence = encode_presence(Presence(agent=agent, online=True, samples=10))
            self._send(PresenceArrived(agent, mutate(rng, presence, True)), None, tally)
            return
        frames = self.frames[agent]
        if frames:  # one frame mutated among intact ones: a digest protects the whole
            bad = rng.randrange(len(frames))
            for i, frame in enumerate(frames):
                payload = mutate(rng, frame, False) if i == bad else frame
                self._send(UpdateArrived(agent, payload), self.seeds[agent], tally)
            return
        payload = mutate(rng, self.seeds[agent], False)
        self._send(UpdateArrived(agent, payload), payload, tally)

    def _send(self, event: UpdateArrived | PresenceArrived, whole: bytes | None,
              tally: Tally) -> None:
        target = "rounds:update" if isinstance(event, UpdateArrived) else "rounds:presence"
        tally.cases[target] += 1
        try:
            actions = self.rounds.handle(event, self.now)
        except Exception:
            tally.crash(target, event.payload)
            return
        for action in actions:
            if isinstance(action, MessageRejected):
                tally.outcomes[f"{target}:{action.reason.value}"] += 1
            elif isinstance(action, UpdateAccepted):
                tally.outcomes[f"{target}:accepted"] += 1
                assert whole is not None  # presences are never accepted as updates
                if not self._sound(action.agent, whole):
                    tally.wrongly_accepted += 1
                self.accepted[action.agent] = whole

    def _sound(self, agent: str, payload: bytes) -> bool:
        """The independent check of an accepted update."""
        if agent in self.accepted:
            return False
        try:
            update = decode_update(payload)
            delta = decode_delta(update.tensors, update.codec, SHAPES)
        except WireError:
            return False
        return (
            (update.agent, update.job, update.round, update.model_id, update.codec)
            == (agent, JOB, 1, self.model_id, self.codec)
            and update.declined is None
            and update.samples >= 1
            and all(np.isfinite(a).all() for a in delta.values())
        )

    def close(self, tally: Tally) -> None:
        """Pass the deadline; the model must be exactly what the accepted updates make it."""
        tally.batches += 1
        tally.updates_accepted += len(self.accepted)
        self.rounds.handle(Tick(), 10.0)
        got = self.rounds.weights
        if not self.accepted:
            same = self.rounds.phase is Phase.FAILED and all(
                np.array_equal(got[n], self.weights[n]) for n in SHAPES
            )
            tally.model_changed += not same
            return
        updates = [decode_update(p) for p in self.accepted.values()]
        deltas = [decode_delta(u.tensors, u.codec, SHAPES) for u in updates]
        samples = [u.samples for u in updates]
        want: Weights = {}
        with np.errstate(over="ignore"):
            for name in SHAPES:
                mean = np.average(np.stack([d[name] for d in deltas]), axis=0, weights=samples)
                want[name] = (self.weights[name] + mean.astype(np.float32)).astype(np.float32)
        if not all(np.isfinite(a).all() for a in want.values()):  # must be refused, not applied
            want = self.weights
        sound = all(np.allclose(got[n], want[n], rtol=1e-5, atol=1e-6) for n in SHAPES)
        tally.model_changed += not sound


# --- the soak ---------------------------------------------------------------------------------


def run_soak(cases: int, seed: int = 0) -> tuple[Tally, float]:
    """Run ``cases`` cases (round-robin over the targets); return the tally and seconds."""
    rng = random.Random(seed)
    seeds = message_seeds(seed)
    deltas = {
        spec: msgpack.packb(encode_delta(
            {n: np.random.default_rng([seed, 2]).normal(0, 0.01, s).astype(np.float32)
             for n, s in SHAPES.items()}, spec, np.random.default_rng([seed, 3])),
            use_bin_type=True)
        for spec in CODEC_SPECS
    }
    chunk_frames = split(seeds["model"], 1024)
    assert chunk_frames is not None
    frames = [msgpack.packb({"v": 1}, use_bin_type=True), *chunk_frames[1]]
    reassembler = Reassembler(1 << 20, ttl_s=5.0, max_payload_size=1 << 20)
    tally = Tally()
    batch: RoundsBatch | None = None
    batch_count = 0
    started = time.perf_counter()
    for case in range(cases):
        turn = case % 4
        if turn == 0:
            name = rng.choice(tuple(DECODERS))
            decode, is_json = DECODERS[name]
            fuzz_decoder(name, decode, mutate(rng, seeds[name], is_json), tally)
        elif turn == 1:
            spec = rng.choice(CODEC_SPECS)
            fuzz_delta(spec, mutate(rng, deltas[spec], False), tally)
        elif turn == 2:
            if rng.random() < 0.5:
                fuzz_chunk(mutate(rng, rng.choice(frames), False), reassembler, case * 1e-3, tally)
            else:
                fuzz_agent(mutate(rng, seeds["model"], False), tally)
        else:
            if batch is None:
                codec = CODEC_SPECS[batch_count % len(CODEC_SPECS)]
                batch = RoundsBatch(seed + batch_count, codec, chunked=batch_count % 5 == 4)
                batch_count += 1
            batch.feed(rng, tally)
            if tally.cases["rounds:update"] + tally.cases["rounds:presence"] >= BATCH * batch_count:
                batch.close(tally)
                batch = None
    if batch is not None:
        batch.close(tally)
    return tally, time.perf_counter() - started


def report(tally: Tally, seconds: float) -> dict[str, Any]:
    total = sum(tally.cases.values())
    return {
        "cases": total,
        "seconds": round(seconds, 2),
        "cases_per_s": round(total / seconds) if seconds else None,
        "crashes": tally.crashes,
        "wrongly_accepted": tally.wrongly_accepted,
        "model_changed": tally.model_changed,
        "round_batches": tally.batches,
        "updates_accepted_by_round_machine": tally.updates_accepted,
        "cases_per_target": dict(sorted(tally.cases.items())),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "crash_reports": tally.crash_reports,
        "clean": tally.clean,
    }


def main(argv: list[str] | None = None) -> int:
    from fedmq_tools.bench.results import RESULTS_DIR, begin, write_results

    parser = argparse.ArgumentParser(prog="python -m fedmq_tools.bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json")
    args = parser.parse_args(argv)
    # as typed: results.command_line() would name the fedmq console script
    command = shlex.join(["python", "-m", "fedmq_tools.bench.soak", *(sys.argv[1:] if argv is None
                                                               else argv)])
    begun = begin()
    tally, seconds = run_soak(args.cases, args.seed)
    doc = report(tally, seconds)
    print(
        f"{doc['cases']} cases in {doc['seconds']} s ({doc['cases_per_s']} cases/s): "
        f"{doc['crashes']} crashes, {doc['wrongly_accepted']} wrongly accepted, "
        f"{doc['model_changed']} changed models; {doc['round_batches']} round batches "
        f"accepted {doc['updates_accepted_by_round_machine']} valid updates"
    )
    for target, count in doc["cases_per_target"].items():
        print(f"  {target:<24} {count}")
    for crash in tally.crash_reports:
        print(crash)
    print(f"results: {write_results(args.out, 'soak', begun, {**doc, 'command': command})}")
    return 0 if tally.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
