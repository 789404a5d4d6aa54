"""Running real coordinators and agents against a real broker, and watching the topics.

Waiting is always on an event with a timeout, never a sleep.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coordinator import Action, RoundClosed, RoundConfig
from coordinator.mqtt import CoordinatorNode
from coordinator.staleness import BufferConfig
from edge_agent.mqtt import AgentNode, run_fleet
from fedmq.launch import AgentSettings, Connection, build_agent, build_coordinator
from fedmq.tasks import DataConfig
from protocol import Presence, RoundMetrics, Topics, decode_metrics, encode_presence
from transport.connection import BrokerURL

TIMEOUT_S = 60.0


def wait_until(predicate: Callable[[], bool], cond: threading.Condition, timeout: float) -> None:
    with cond:
        if not cond.wait_for(predicate, timeout=timeout):
            raise TimeoutError(f"condition not met within {timeout} s")


class LogWatch(logging.Handler):
    """fedmq's log lines as they are emitted, from any thread, to wait on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.lines.append(record.getMessage())
            self.cond.notify_all()

    def wait_for(self, text: str, timeout: float = TIMEOUT_S) -> str:
        """The first line containing ``text``, once one is logged."""
        wait_until(lambda: any(text in line for line in self.lines), self.cond, timeout)
        with self.cond:
            return next(line for line in self.lines if text in line)


@contextmanager
def watching_logs(name: str = "fedmq") -> Iterator[LogWatch]:
    """Capture the warnings (and worse) of ``name``'s loggers while the block runs."""
    watch, logger = LogWatch(), logging.getLogger(name)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)


@dataclass
class TopicWatcher:
    """A plain paho subscriber recording every message under ``fedmq/v1/{job}/#``.

    MQTT 3.1.1, which every tested broker speaks. On RabbitMQ a wildcard subscription
    gets no retained messages: start it before what it must see.
    """

    url: str
    job: str
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        broker = BrokerURL.parse(self.url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(f"fedmq/v1/{self.job}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("watcher did not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.cond.notify_all()

    def on(self, suffix: str) -> list[bytes]:
        with self.cond:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def metrics(self) -> list[RoundMetrics]:
        return [decode_metrics(p) for p in self.on("/metrics")]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
        wait_until(predicate, self.cond, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class FakeAgent:
    """A client that says it is an online agent, live and in answer to every roll call, and
    never trains: a round that counts it waits for it (or refuses what it sends)."""

    def __init__(self, url: str, job: str, agent: str) -> None:
        broker = BrokerURL.parse(url)
        self.topics = Topics(job)
        self.agent = agent
        online = Presence(agent=agent, online=True, samples=10, trainer="none")
        self._online = encode_presence(online)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        subscribed = threading.Event()

        def on_connect(client: mqtt.Client, *_: Any) -> None:
            client.subscribe(self.topics.rollcall, qos=1)
            client.publish(self.topics.presence(agent), self._online, qos=1, retain=True)

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda c, *_: c.publish(self.topics.presence(agent),
                                                         self._online, qos=1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError(f"{agent} did not subscribe")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        """Forget it: clear its retained presence, then disconnect."""
        self.client.publish(self.topics.presence(self.agent), b"", qos=1,
                            retain=True).wait_for_publish(10)
        self.client.disconnect()
        self.client.loop_stop()


class CoordinatorThread:
    """A coordinator node run on a thread of this test process."""

    def __init__(self, config: RoundConfig, url: str, run_dir: Path | None = None, *,
                 data: DataConfig | None = None, resume: bool = False,
                 on_action: Callable[[Action], None] | None = None,
                 mqtt5: bool = True, buffer: BufferConfig | None = None,
                 take_updates: bool = True) -> None:
        self.closed: list[RoundMetrics] = []
        self.cond = threading.Condition()
        self._extra = on_action
        self.node: CoordinatorNode = build_coordinator(
            config, Connection(BrokerURL.parse(url), mqtt5=mqtt5), data=data or DataConfig(),
            run_dir=run_dir, resume=resume, on_action=self._observe, buffer=buffer,
            take_updates=take_updates,
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _observe(self, action: Action) -> None:
        if self._extra is not None:
            self._extra(action)
        if isinstance(action, RoundClosed):
            with self.cond:
                self.closed.append(action.metrics)
                self.cond.notify_all()

    def _run(self) -> None:
        try:
            self.node.run()
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def start(self) -> CoordinatorThread:
        self.thread.start()
        return self

    def wait_rounds(self, n: int, timeout: float = TIMEOUT_S) -> None:
        wait_until(lambda: len(self.closed) >= n, self.cond, timeout)

    def join(self, timeout: float = TIMEOUT_S) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.node.stop("test timeout")
            self.thread.join(10)
            raise TimeoutError("coordinator did not finish")
        if self.error is not None:
            raise self.error


@contextmanager
def agent_fleet(url: str, job: str, task: str, count: int, *, first: int = 0,
                total: int | None = None, exit_when_done: bool = True,
                data: DataConfig | None = None, mqtt5: bool = True,
                train_delays_s: tuple[float, ...] = (),
                ) -> Iterator[list[AgentNode]]:
    """``count`` in-process agents, each with its own MQTT connection; stopped on exit.
    ``train_delays_s[i]`` slows agent i down artificially (a slow device)."""
    nodes = [
        build_agent(
            AgentSettings(job=job, task=task, agent_id=f"agent-{i}", shard=i,
                          num_shards=total or count, data=data or DataConfig(), threads=1,
                          exit_when_done=exit_when_done,
                          train_delay_s=dict(enumerate(train_delays_s)).get(i - first, 0.0)),
            Connection(BrokerURL.parse(url), mqtt5=mqtt5),
        )
        for i in range(first, first + count)
    ]
    threads = run_fleet(nodes)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        for thread in threads:
            thread.join(10)


def session_present(url: str, client_id: str) -> bool:
    """Whether the broker holds a session for ``client_id``: connect without a clean
    session and read CONNACK's session-present flag (MQTT 3.1.1, every tested broker),
    then connect cleanly once more so that the probe itself leaves nothing behind."""
    broker = BrokerURL.parse(url)
    present: list[bool] = []
    for clean in (False, True):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=clean)
        acked = threading.Event()

        def on_connect(_c: Any, done: threading.Event, flags: Any, *_: Any) -> None:
            present.append(bool(flags.session_present))
            done.set()

        client.user_data_set(acked)
        client.on_connect = on_connect
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            if not acked.wait(10):
                raise TimeoutError("no CONNACK")
        finally:
            client.disconnect()
            client.loop_stop()
    return present[0]


def fedmq_process(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """``python -m fedmq ARGS`` as a child process, output to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "fedmq", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def wait_process(proc: subprocess.Popen[bytes], timeout: float = TIMEOUT_S) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise
