"""The agent's paho adapter: owns the MQTT client, the clock and the training call.

paho's network thread only queues what arrives (the :class:`~transport.link.Link`:
MQTT 5 or 3.1.1, bounded in bytes, each message acknowledged once the core has
handled it). The agent's own thread (the one in :meth:`AgentNode.run`) feeds the
core and carries out its actions. When
the core asks for training, a worker thread checks the resource policy and
trains, then queues the result as one more event; meanwhile the network thread
keeps the session alive and the agent's thread can still stop: a shutdown
mid-round abandons the round (declines it) instead of waiting for the trainer.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_never

from edge_agent.agent import (
    AgentAction,
    AgentCore,
    AgentEvent,
    Connected,
    KeepModel,
    ModelRejected,
    RoundKey,
    RunFinished,
    SaveResidual,
    ShutdownRequested,
    Subscribe,
    Train,
    TrainingDone,
    TrainingFailed,
    Unsubscribe,
    UpdateSent,
)
from edge_agent.device_model import save_device_model
from edge_agent.downlink import HeldModel
from edge_agent.events import MessagesLost, defer
from edge_agent.feedback import save_residual
from edge_agent.personal import DeviceTrainer
from edge_agent.policy import (
    ResourcePolicy,
    peak_rss,
    read_memory,
    reset_peak_rss,
    round_need,
    run_hook,
    veto,
)
from edge_agent.state import StateDir
from edge_agent.trainer import Trainer
from protocol import ModelAnnouncement, Publish
from protocol.chunks import is_chunk_frame
from transport.connection import BrokerURL, Session
from transport.inbox import Inbox
from transport.link import Link, PacketTooLargeError, Received

log = logging.getLogger("fedmq.agent")

#: bytes of received messages an agent holds (a model and its chunks) before the broker waits
INBOX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Refused:
    why: str


@dataclass(frozen=True, slots=True)
class _Quit:
    pass


class AgentNode:
    """One agent: an :class:`AgentCore`, its trainer and its own MQTT connection."""

    def __init__(
        self,
        core: AgentCore,
        trainer: Trainer,
        broker: BrokerURL,
        session: Session,
        *,
        exit_when_done: bool = True,
        on_action: Callable[[AgentAction], None] | None = None,
        queue_size: int = 10_000,
        residual_path: Path | None = None,
        device: DeviceTrainer | None = None,
        device_model_path: Path | None = None,
        state: StateDir | None = None,
        policy: ResourcePolicy | None = None,
        train_delay_s: float = 0.0,
    ) -> None:
        """``residual_path``: where the error-feedback residual persists (None: memory only);
        ``device``: the trainer that keeps this device's own model (personal layers,
        fine-tuning, local inference), None if it keeps none; ``device_model_path``: where
        that model is saved after every round and at the run's end (None: not saved);
        ``state``: where each version of the global model is kept (the core starts from
        the one kept there, given to it as ``held``); ``policy``: when this device may
        train (None: always)."""
        self.core = core
        self._trainer = trainer
        self._broker = broker
        self._session = session
        self._exit_when_done = exit_when_done
        self._on_action = on_action
        self._residual_path = residual_path
        self._device = device
        self._device_model_path = device_model_path
        self._state = state
        held = core.held
        self._kept = held.identity if held is not None else None  # what the state dir holds
        self._policy = policy or ResourcePolicy()
        #: what the last trained round took beyond its starting RSS (None: none measured)
        self._learned_need: int | None = None
        self._inbox: Inbox[Received | AgentEvent | _Refused | _Quit] = Inbox(
            queue_size, core.agent, INBOX_BYTES
        )
        self.rounds_trained = 0
        self.refused: str | None = None
        self.finished = threading.Event()
        #: an artificial delay after each training: the experiment of a slow device
        #: (docs/STRATEGIES.md, "Heterogeneous fleets"); cut short by stop()
        self._train_delay_s = train_delay_s
        self._halt = threading.Event()
        self._link = Link(
            broker,
            session,
            self._inbox,
            subscriptions=lambda: core.subscriptions,
            on_connected=lambda: self._put(Connected()),
            on_refused=lambda why: self._put(_Refused(why)),
            will=core.will(),
        )

    def _put(self, item: AgentEvent | _Refused | _Quit) -> None:
        self._inbox.offer(item)

    @property
    def saved_model(self) -> HeldModel | None:
        """The newest global model on this device (kept across restarts with ``state``)."""
        return self.core.held

    @property
    def dropped(self) -> int:
        """Notices lost because the inbound queue was full (messages are never dropped)."""
        return self._inbox.dropped

    # --- the owning thread ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the agent to go offline and return from :meth:`run`; safe from any thread."""
        self._halt.set()
        self._put(_Quit())

    def run(self) -> None:
        """Connect and serve rounds until stopped, refused, or (optionally) the run is done."""
        self._link.start()
        # What arrives while a round trains waits for its result, so the core sees events
        # in the order a trainer running inline would: a round's update goes out even
        # when the next round's model came in meanwhile (the coordinator counts it stale).
        # Deferred messages stay unacknowledged and count against the inbox's bytes.
        deferred: deque[Received | AgentEvent] = deque()
        try:
            while True:
                busy = self.core.training is not None
                item = deferred.popleft() if deferred and not busy else self._inbox.get()
                assert item is not None  # get() without a timeout waits for an item
                if isinstance(item, _Quit):
                    self._abandon_round()
                    self._feed(ShutdownRequested())
                    break
                if isinstance(item, TrainingDone):
                    self.rounds_trained += 1
                elif busy and not isinstance(item, _Refused | TrainingFailed) and not (
                    isinstance(item, Connected) or self._is_rollcall(item)
                ):  # presence goes out at once: the coordinator counts only live presence
                    self._defer(deferred, item)
                    continue
                if isinstance(item, _Refused):
                    self.refused = item.why
                    log.error("%s: %s", self.core.agent, item.why)
                    break
                if isinstance(item, Received):
                    self._feed(self.core.arrived(item.topic, item.payload))
                    self._link.done(item)
                else:
                    if isinstance(item, Connected) and self.core.unwanted:
                        self._link.unsubscribe(self.core.unwanted)  # a session may hold them
                    self._feed(item)
                if self._exit_when_done and self.finished.is_set():
                    self._feed(ShutdownRequested())
                    break
        finally:
            self._halt.set()
            self._link.close()

    def _is_rollcall(self, item: object) -> bool:
        return isinstance(item, Received) and item.topic == self.core.topics.rollcall

    def _whole_model(self, item: Received | AgentEvent) -> bool:
        return (isinstance(item, Received) and item.topic == self.core.topics.model
                and not is_chunk_frame(item.payload))

    def _defer(self, deferred: deque[Received | AgentEvent], item: Received | AgentEvent) -> None:
        """Keep ``item`` until the training is done; a newer whole model replaces (and
        acknowledges) the whole models still queued (:func:`~edge_agent.events.defer`)."""
        for old in defer(deferred, item, whole_model=self._whole_model, lost=MessagesLost()):
            assert isinstance(old, Received)
            self._link.done(old)

    def _feed(self, event: AgentEvent) -> None:
        for action in self.core.handle(event, time.monotonic(), wall=time.time()):
            self._carry_out(action)
            if self._on_action is not None:
                self._on_action(action)

    def _carry_out(self, action: AgentAction) -> None:
        match action:
            case Publish(topic=topic, payload=payload, retain=retain):
                try:
                    self._link.publish(topic, payload, retain)
                except PacketTooLargeError as exc:  # the coordinator's --max-payload is too large
                    log.error("%s: not sent: %s", self.core.agent, exc)
            case Train(key=key, model=model):
                self._start_round(key, model)
            case ModelRejected(reason=reason, detail=detail):
                log.warning("%s: rejected a model: %s: %s", self.core.agent, reason.value, detail)
            case UpdateSent(key=key, size=size, resent=resent):
                verb = "re-sent" if resent else "sent"
                log.info(
                    "%s: %s update for round %d (%d bytes)", self.core.agent, verb, key[1], size
                )
                if not resent:  # after the publish, so saving never delays the reply
                    self._save_device_model()
            case KeepModel() | SaveResidual() | Subscribe() | Unsubscribe():
                self._keep_state(action)
            case RunFinished(model=model):
                log.info("%s: run %s finished at round %d", self.core.agent, model.run, model.round)
                self._keep(HeldModel.of(model))
                if self._device is not None:  # personal layers, fine-tuning
                    try:
                        self._device.adopt(model.weights, model.plan)
                    except ValueError as exc:
                        log.error("%s: cannot adopt the final model: %s", self.core.agent, exc)
                    self._save_device_model()
                self.finished.set()
            case _:
                assert_never(action)

    def _keep_state(self, action: KeepModel | SaveResidual | Subscribe | Unsubscribe) -> None:
        """Persist what the core asks to outlive a restart; fetch whole models or stop."""
        match action:
            case KeepModel(held=held):
                self._keep(held)
            case SaveResidual(state=state) if self._residual_path is not None:
                try:
                    save_residual(self._residual_path, state)
                except OSError as exc:  # keep serving: the residual still lives in memory
                    log.error("%s: cannot save the residual: %s", self.core.agent, exc)
            case SaveResidual():
                pass  # no residual path: the residual lives in the core's memory only
            case Subscribe(topics=topics):
                self._link.subscribe([(topic, 1) for topic in topics])
            case Unsubscribe(topics=topics):
                self._link.unsubscribe(topics)
            case _:
                assert_never(action)

    def _start_round(self, key: RoundKey, model: ModelAnnouncement) -> None:
        self._keep(HeldModel.of(model))
        worker = threading.Thread(
            target=lambda: self._inbox.put(self._train(key, model)),
            name=f"train-{self.core.agent}-{model.round}",
            daemon=True,  # abandoned at shutdown: the process does not wait for it
        )
        worker.start()

    def _keep(self, held: HeldModel) -> None:
        """Keep the device's newest version of the global model on disk, with state."""
        if self._state is not None and held.identity != self._kept:
            self._kept = held.identity
            try:
                self._state.save_model(self.core.job, held)
            except OSError as exc:  # keep serving: the model still lives in memory
                log.error("%s: cannot save the global model: %s", self.core.agent, exc)

    def _abandon_round(self) -> None:
        """Decline the round in training, so the coordinator need not wait for it."""
        key = self.core.training
        if key is None:
            return
        log.warning("%s: stopping mid-round %d: abandoned, declined", self.core.agent, key[1])
        self._feed(TrainingFailed(key, "agent shutting down"))

    def _vetoed(self, model: ModelAnnouncement) -> str | None:
        """The resource policy's reason to skip this round, or None (runs the hook)."""
        policy = self._policy
        now = time.localtime()
        model_bytes = 4 * sum(w.size for w in model.weights.values())  # as float32
        need = round_need(model_bytes, self._learned_need)
        reason = veto(policy, now.tm_hour * 60 + now.tm_min, read_memory(), need)
        if reason is None and policy.hook is not None:
            context = {"job": self.core.job, "agent": self.core.agent, "round": str(model.round)}
            reason = run_hook(policy.hook, context, policy.hook_timeout_s)
        return reason

    def _train(self, key: RoundKey, model: ModelAnnouncement) -> AgentEvent:
        """On the round's worker thread: the policy, then the trainer."""
        reason = self._vetoed(model)
        if reason is not None:
            log.info("%s: declining round %d: %s", self.core.agent, model.round, reason)
            return TrainingFailed(key, f"vetoed: {reason}")
        before = read_memory().rss_bytes if reset_peak_rss() else None
        started = time.perf_counter()
        try:
            result = self._trainer.train(model.weights, model.plan, model.round)
        except Exception as exc:  # the trainer is user code: decline, log, carry on
            log.error(
                "%s: training round %d failed:\n%s",
                self.core.agent,
                model.round,
                traceback.format_exc(),
            )
            return TrainingFailed(key, f"training failed: {type(exc).__name__}: {exc}")
        took = time.perf_counter() - started
        peak = peak_rss()
        if before is not None and peak is not None:  # one agent per process, as on a device
            self._learned_need = max(0, peak - before)
        if self._train_delay_s > 0:
            self._halt.wait(self._train_delay_s)
        return TrainingDone(key, result, took)

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """The device model's outputs for ``x`` (see :meth:`DeviceTrainer.predict`).

        Raises:
            ValueError: if the trainer keeps no device model, or holds none yet.
        """
        if self._device is None:
            raise ValueError(f"{type(self._trainer).__name__} keeps no device model")
        return self._device.predict(x)

    def _save_device_model(self) -> None:
        path = self._device_model_path
        if path is None or self._device is None:
            return
        weights = self._device.device_model
        if weights is None:
            return
        try:
            save_device_model(path, weights)
        except OSError as exc:  # keep serving: the model still lives in memory
            log.error("%s: cannot save the device model: %s", self.core.agent, exc)


def run_fleet(nodes: Sequence[AgentNode]) -> list[threading.Thread]:
    """Start each agent on its own thread (each keeps its own MQTT connection)."""
    threads = [
        threading.Thread(target=node.run, name=f"agent-{node.core.agent}", daemon=True)
        for node in nodes
    ]
    for thread in threads:
        thread.start()
    return threads
