"""One agent's state directory: what a device keeps across restarts and power cuts.

Layout, under ``{state_dir}/{agent_id}/``:

- ``model.msgpack``: the version of the broadcast model this agent holds (the last
  global model it was announced, whole or rebuilt from deltas, or the run's final
  model), with its job, run, round and the run's delta codec, so that after a
  restart the next delta applies to it (docs/PROTOCOL.md §15.5);
- ``residual.msgpack``: the error-feedback residual (:mod:`edge_agent.feedback`);
- ``device-model.msgpack``: the device's own model (personal layers, local
  inference), written by :mod:`edge_agent.device_model`.

Invariants: every file is an :mod:`protocol.statefile` document (msgpack, the
wire's tensor encoding, never pickle, written atomically and durably); an update
the agent has sent is never stored (the residual is what it did *not* send, the
device model holds the global layers as received); a file that does not load is
set aside as ``NAME.corrupt`` with the reason logged, and the agent starts
without it instead of crashing; temporary files a power cut left are removed
unread.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edge_agent.downlink import HeldModel
from edge_agent.feedback import Residual, load_residual
from protocol import Weights, weights_digest
from protocol.durable import stray_temporaries
from protocol.statefile import load_doc, save_doc

log = logging.getLogger("fedmq.agent.state")

MODEL_NAME = "model.msgpack"
RESIDUAL_NAME = "residual.msgpack"
DEVICE_MODEL_NAME = "device-model.msgpack"
STATE_FILES = (MODEL_NAME, RESIDUAL_NAME, DEVICE_MODEL_NAME)
_VERSION = 1
_MODEL_TYPE = "global-model"


@dataclass(frozen=True, slots=True)
class SavedModel:
    """A global model as the device last saw it."""

    job: str
    run: str
    round: int
    weights: Weights
    done: bool
    #: the codec of the deltas its run sends (None: none, or a file written before deltas)
    delta_codec: str | None = None

    def held(self) -> HeldModel:
        """The version the agent core continues from; its id is the digest of the weights
        as read back, so a file that changed on disk can never pass for its version."""
        return HeldModel(self.run, self.round, weights_digest(self.weights), self.weights,
                         self.done, self.delta_codec)


class StateDir:
    """Loads and saves one agent's files; only the adapter calls it (it does file I/O)."""

    def __init__(self, root: Path, agent_id: str) -> None:
        self.path = root / agent_id
        self.path.mkdir(parents=True, exist_ok=True)
        for name in STATE_FILES:
            for stray in stray_temporaries(self.path / name):
                log.info("%s: removing %s, a write a restart interrupted", agent_id, stray.name)
                stray.unlink(missing_ok=True)

    def save_model(self, job: str, held: HeldModel) -> None:
        fields = {"job": job, "run": held.run, "round": held.round, "done": held.done,
                  "delta_codec": held.delta_codec}
        save_doc(self.path / MODEL_NAME, _MODEL_TYPE, _VERSION, held.weights, fields)

    def load_model(self) -> SavedModel | None:
        """The last saved global model; ``None`` if none, or if it is unusable (logged)."""
        path = self.path / MODEL_NAME
        try:
            return _read_model(path)
        except ValueError as exc:
            self._set_aside(path, str(exc))
            return None

    @property
    def residual_path(self) -> Path:
        return self.path / RESIDUAL_NAME

    @property
    def device_model_path(self) -> Path:
        return self.path / DEVICE_MODEL_NAME

    def load_residual(self) -> Residual | None:
        path = self.path / RESIDUAL_NAME
        try:
            return load_residual(path)
        except ValueError as exc:
            self._set_aside(path, str(exc))
            return None

    def _set_aside(self, path: Path, reason: str) -> None:
        """Keep a bad file for inspection, out of the way of the next load."""
        log.warning("state: ignoring %s: %s (kept as %s.corrupt)", path, reason, path.name)
        os.replace(path, path.with_name(path.name + ".corrupt"))


def _read_model(path: Path) -> SavedModel | None:
    """Raises: ValueError for a file that is not a version-1 saved global model."""
    loaded = load_doc(path, _MODEL_TYPE, _VERSION)
    if loaded is None:
        return None
    doc, weights = loaded
    job, run, round_no, done = doc.get("job"), doc.get("run"), doc.get("round"), doc.get("done")
    if not (isinstance(job, str) and isinstance(run, str) and isinstance(done, bool)):
        raise ValueError(f"{path}: job, run or done missing")
    if not isinstance(round_no, int) or isinstance(round_no, bool) or round_no < 0:
        raise ValueError(f"{path}: bad round {round_no!r}")
    delta_codec = doc.get("delta_codec")  # absent from files written before deltas
    if delta_codec is not None and not isinstance(delta_codec, str):
        raise ValueError(f"{path}: bad delta_codec {delta_codec!r}")
    return SavedModel(job, run, round_no, weights, done, delta_codec)
