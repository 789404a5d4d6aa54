"""Crash-safe checkpoints: msgpack with raw float32 tensors, written atomically. No pickle.

A checkpoint is written after a round's aggregation and before the next round
is announced, so a coordinator killed at any point resumes from the last
complete round. The write goes to a temporary file in the same directory,
is fsynced, then renamed over the old one: a reader sees the old or the new
checkpoint, never a torn one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from protocol import (
    RoundMetrics,
    Weights,
    WireError,
    decode_metrics,
    decode_weights,
    encode_metrics,
    encode_weights,
)
from protocol.durable import atomic_write

_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used to resume."""


@dataclass(frozen=True, slots=True)
class BroadcastState:
    """The broadcast model a run with delta downlinks continues from (coordinator/broadcast.py)."""

    codec: str
    dtype: str
    weights: Weights
    #: the version the last delta applies to (None: the version travels whole only)
    base_id: str | None = None
    #: that delta's entry list, msgpack-encoded (empty without a base)
    delta: bytes = b""


@dataclass(frozen=True, slots=True)
class Buffered:
    """One update waiting in the FedBuff buffer (:mod:`coordinator.buffered`)."""

    agent: str
    #: the model version it was trained from
    base: int
    #: its staleness weight, fixed when it was accepted
    weight: float
    delta: Weights
    #: its sample count: synchronous rounds carrying late updates weigh them by it
    #: (:mod:`coordinator.stragglers`); FedBuff's buffer does not (0)
    samples: int = 0


@dataclass(frozen=True, slots=True)
class LiveVersion:
    """A model version updates may still be based on: its id and who may train on it."""

    version: int
    model_id: str
    cohort: tuple[str, ...]
    #: agents whose update (or decline) based on this version was counted
    answered: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything a coordinator needs to continue a run after the last closed round."""

    job: str
    run: str
    task: str
    round: int
    weights: Weights
    history: tuple[RoundMetrics, ...] = ()
    rejected: Mapping[str, int] = field(default_factory=dict)
    #: named tensor groups a strategy keeps between rounds (e.g. server momentum)
    opt_moments: Mapping[str, Weights] = field(default_factory=dict)
    #: the server optimiser spec ``opt_moments`` belongs to, and the steps it took
    server_opt: str = "fedavg"
    server_steps: int = 0
    #: (sampling rate q, noise multiplier z) of each DP round so far, for the accountant
    dp_rounds: tuple[tuple[float, float], ...] = ()
    #: with delta downlinks: the version agents hold, so the chain continues exactly
    broadcast: BroadcastState | None = None
    #: FedBuff: the buffer not yet applied, and the versions still accepted; synchronous
    #: rounds with --carry-late: the late updates carried, and the rounds still taking them
    buffer: tuple[Buffered, ...] = ()
    live: tuple[LiveVersion, ...] = ()


def encode_checkpoint(ckpt: Checkpoint) -> bytes:
    doc = {
        "v": _VERSION,
        "type": "checkpoint",
        "job": ckpt.job,
        "run": ckpt.run,
        "task": ckpt.task,
        "round": ckpt.round,
        "weights": encode_weights(ckpt.weights),
        "history": [encode_metrics(m) for m in ckpt.history],
        "rejected": dict(ckpt.rejected),
        "opt_moments": {k: encode_weights(v) for k, v in ckpt.opt_moments.items()},
        "server_opt": ckpt.server_opt,
        "server_steps": ckpt.server_steps,
        "dp_rounds": [[q, z] for q, z in ckpt.dp_rounds],
        "buffer": [
            [b.agent, b.base, b.weight, encode_weights(b.delta), b.samples] for b in ckpt.buffer
        ],
        "live": [
            [v.version, v.model_id, list(v.cohort), list(v.answered)] for v in ckpt.live
        ],
    }
    if ckpt.broadcast is not None:  # written only with deltas: other checkpoints are unchanged
        b = ckpt.broadcast
        doc["broadcast"] = {"codec": b.codec, "dtype": b.dtype, "base_id": b.base_id,
                            "delta": b.delta, "weights": encode_weights(b.weights)}
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Parse a checkpoint.

    Raises:
        CheckpointError: for a file of another version, or any corruption.
    """
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if not isinstance(doc, dict) or doc.get("type") != "checkpoint":
            raise CheckpointError("not a fedmq checkpoint")
        if doc.get("v") != _VERSION:
            raise CheckpointError(f"checkpoint version {doc.get('v')!r}, want {_VERSION}")
        history = tuple(decode_metrics(m) for m in doc["history"])
        rejected = {str(k): int(v) for k, v in doc["rejected"].items()}
        state = {str(k): decode_weights(v) for k, v in doc["opt_moments"].items()}
        round_no = doc["round"]
        if not isinstance(round_no, int) or round_no < 0:
            raise CheckpointError(f"bad round {round_no!r}")
        # absent from checkpoints written before server optimisers and DP existed
        steps = doc.get("server_steps", 0)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise CheckpointError(f"bad server_steps {steps!r}")
        dp_rounds = tuple(_dp_round(r) for r in doc.get("dp_rounds", []))
        # absent from checkpoints written before the buffered mode existed
        buffer = tuple(_buffered(entry) for entry in doc.get("buffer", []))
        live = tuple(
            LiveVersion(_count(v), str(mid), tuple(map(str, cohort)), tuple(map(str, ans)))
            for v, mid, cohort, ans in doc.get("live", [])
        )
        return Checkpoint(
            job=str(doc["job"]),
            run=str(doc["run"]),
            task=str(doc["task"]),
            round=round_no,
            weights=decode_weights(doc["weights"]),
            history=history,
            rejected=rejected,
            opt_moments=state,
            server_opt=str(doc.get("server_opt", "fedavg")),
            server_steps=steps,
            dp_rounds=dp_rounds,
            broadcast=_broadcast(doc.get("broadcast")),
            buffer=buffer,
            live=live,
        )
    except CheckpointError:
        raise
    except (WireError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"corrupt checkpoint: {exc}") from None
    except Exception as exc:  # msgpack's own error types for truncated or bad bytes
        raise CheckpointError(f"unreadable checkpoint: {exc}") from None


def _dp_round(entry: object) -> tuple[float, float]:
    """One DP round's (q, z): 0 < q <= 1, z >= 0, both finite."""
    if isinstance(entry, list) and len(entry) == 2:
        q, z = entry
        numbers = all(isinstance(x, float | int) and not isinstance(x, bool) for x in (q, z))
        if numbers and 0 < q <= 1 and 0 <= z < float("inf"):
            return float(q), float(z)
    raise CheckpointError(f"bad DP round {entry!r}")


def _broadcast(doc: object) -> BroadcastState | None:
    """The broadcast model of a checkpoint written with deltas on (absent otherwise)."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise CheckpointError("bad broadcast state")
    codec, dtype, base_id, delta = (doc.get(k) for k in ("codec", "dtype", "base_id", "delta"))
    if not (isinstance(codec, str) and isinstance(dtype, str) and isinstance(delta, bytes)):
        raise CheckpointError("bad broadcast state: codec, dtype or delta")
    if base_id is not None and not isinstance(base_id, str):
        raise CheckpointError("bad broadcast state: base_id")
    return BroadcastState(codec, dtype, decode_weights(doc["weights"]), base_id, delta)


def _buffered(entry: list[object]) -> Buffered:
    """One buffered update; its sample count is absent from checkpoints written before
    synchronous rounds carried late updates."""
    agent, base, weight, delta, *rest = entry
    if len(rest) > 1:
        raise CheckpointError("bad buffered update")
    return Buffered(str(agent), _count(base), _weight(weight), decode_weights(delta),
                    _count(rest[0]) if rest else 0)


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise CheckpointError(f"bad version {value!r}")


def _weight(value: object) -> float:
    """A staleness weight: 0 < w <= 1."""
    if isinstance(value, float | int) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise CheckpointError(f"bad staleness weight {value!r}")


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Atomically and durably replace ``path`` with ``ckpt``."""
    atomic_write(path, encode_checkpoint(ckpt))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: if there is none.
        CheckpointError: if it is corrupt.
    """
    return decode_checkpoint(path.read_bytes())
