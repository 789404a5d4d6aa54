"""The agent's paho adapter: owns the MQTT client, the clock and the training call.

paho's network thread only queues what arrives. The agent's own thread (the
one in :meth:`AgentNode.run`) feeds the core, runs training when the core asks
for it (so the network thread keeps the session alive meanwhile), and feeds
the result back as one more event.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.agent import (
    AgentAction,
    AgentCore,
    AgentEvent,
    Connected,
    ModelArrived,
    ModelRejected,
    RunFinished,
    SaveResidual,
    ShutdownRequested,
    Train,
    TrainingDone,
    TrainingFailed,
    UpdateSent,
)
from edge_agent.connection import BrokerURL, Session, connect, make_client, refused_for_good
from edge_agent.feedback import save_residual
from edge_agent.trainer import Trainer
from protocol import Publish

log = logging.getLogger("fedmq.agent")

#: how long a clean shutdown waits for the offline presence to reach the broker
FLUSH_TIMEOUT_S = 5.0


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
        queue_size: int = 64,
        residual_path: Path | None = None,
    ) -> None:
        """``residual_path``: where the error-feedback residual persists (None: memory only)."""
        self.core = core
        self._trainer = trainer
        self._broker = broker
        self._session = session
        self._exit_when_done = exit_when_done
        self._on_action = on_action
        self._residual_path = residual_path
        self._queue: queue.Queue[AgentEvent | _Refused | _Quit] = queue.Queue(queue_size)
        self.dropped = 0
        self.rounds_trained = 0
        self.refused: str | None = None
        self.finished = threading.Event()
        self._client = make_client(broker, session, will=core.will())
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._last_publish: mqtt.MQTTMessageInfo | None = None

    # --- paho callbacks -------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            why = refused_for_good(reason_code)
            log.warning("%s: connection refused: %s", self.core.agent, reason_code)
            if why is not None:
                self._put(_Refused(why))
            return
        client.subscribe(self.core.topics.agent_subscriptions)
        self._put(Connected())

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._put(ModelArrived(bytes(message.payload)))

    def _put(self, item: AgentEvent | _Refused | _Quit) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.error("%s: inbound queue full; dropped a message", self.core.agent)

    # --- the owning thread ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the agent to go offline and return from :meth:`run`; safe from any thread."""
        self._put(_Quit())

    def run(self) -> None:
        """Connect and serve rounds until stopped, refused, or (optionally) the run is done."""
        connect(self._client, self._broker, self._session)
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, _Quit):
                    self._feed(ShutdownRequested())
                    break
                if isinstance(item, _Refused):
                    self.refused = item.why
                    log.error("%s: %s", self.core.agent, item.why)
                    break
                self._feed(item)
                if self._exit_when_done and self.finished.is_set():
                    self._feed(ShutdownRequested())
                    break
        finally:
            self._flush_and_disconnect()

    def _feed(self, event: AgentEvent) -> None:
        pending: deque[AgentAction] = deque(self.core.handle(event, time.time()))
        while pending:
            action = pending.popleft()
            follow_up = self._carry_out(action)
            if follow_up is not None:
                pending.extend(self.core.handle(follow_up, time.time()))
            if self._on_action is not None:
                self._on_action(action)

    def _carry_out(self, action: AgentAction) -> AgentEvent | None:
        match action:
            case Publish(topic=topic, payload=payload, retain=retain):
                self._last_publish = self._client.publish(topic, payload, qos=1, retain=retain)
            case Train(key=key, model=model):
                return self._train(key, model)
            case ModelRejected(reason=reason, detail=detail):
                log.warning("%s: rejected a model: %s: %s", self.core.agent, reason.value, detail)
            case UpdateSent(key=key, size=size, resent=resent):
                verb = "re-sent" if resent else "sent"
                log.info(
                    "%s: %s update for round %d (%d bytes)", self.core.agent, verb, key[1], size
                )
            case SaveResidual(state=state) if self._residual_path is not None:
                try:
                    save_residual(self._residual_path, state)
                except OSError as exc:  # keep serving: the residual still lives in memory
                    log.error("%s: cannot save the residual: %s", self.core.agent, exc)
            case RunFinished(model=model):
                log.info("%s: run %s finished at round %d", self.core.agent, model.run, model.round)
                self.finished.set()
        return None

    def _train(self, key: tuple[str, int, str], model: Any) -> AgentEvent:
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
        self.rounds_trained += 1
        return TrainingDone(key, result, time.perf_counter() - started)

    def _flush_and_disconnect(self) -> None:
        if self._last_publish is not None and self._client.is_connected():
            try:
                self._last_publish.wait_for_publish(timeout=FLUSH_TIMEOUT_S)
            except (RuntimeError, ValueError) as exc:
                log.warning("%s: last publish not confirmed: %s", self.core.agent, exc)
        self._client.disconnect()
        self._client.loop_stop()


def run_fleet(nodes: Sequence[AgentNode]) -> list[threading.Thread]:
    """Start each agent on its own thread (each keeps its own MQTT connection)."""
    threads = [
        threading.Thread(target=node.run, name=f"agent-{node.core.agent}", daemon=True)
        for node in nodes
    ]
    for thread in threads:
        thread.start()
    return threads
