"""Many agents on one thread: a ``selectors`` loop drives one paho client per agent.

Why: :class:`edge_agent.mqtt.AgentNode` spends two threads per agent (its own
and paho's), which is right for a device and wrong for simulating a thousand
devices on two cores. Here every member still has its own MQTT connection,
client id, last will and pure :class:`~edge_agent.agent.AgentCore`, so broker
and coordinator see N independent devices; only the process is shared.

Invariants:
- One thread owns everything: clients, cores, trainers and the selector. Only
  :meth:`Swarm.stop` may be called from elsewhere (another thread, a signal).
- paho callbacks only hand off, onto one deque; cores are fed after the socket
  work of each loop turn, as in the other adapters.
- Training runs inline on the loop thread: meant for tiny models (the numpy
  trainer); a long training stalls every member's keepalive.
- At most ``MAX_CONNECTING`` members await CONNACK at once, so a fleet's start
  never overflows the broker's listen backlog; lost connections retry after a
  jittered, doubling delay (:class:`transport.backoff.Backoff`).
- MQTT 5 first: when the broker refuses it (a CONNACK "unsupported protocol
  version", or a close before any CONNACK), the member is rebuilt for 3.1.1, and
  so is every member not connected yet: the fleet probes once, not N times.
- With a :class:`~fedmq.fleet_schedule.FleetSchedule` (``--speeds`` and the rest) member
  ``k`` is agent ``first + k`` of it: its training result is held back by its speed
  class's delay (the loop keeps serving the others meanwhile), and while the schedule
  has it offline it is disconnected (offline presence first, the training in hand
  declined) and reconnects when the schedule brings it back.
"""

from __future__ import annotations

import contextlib
import enum
import heapq
import logging
import resource
import selectors
import socket
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from typing_extensions import assert_never

from edge_agent.agent import (
    AgentAction,
    AgentCore,
    AgentEvent,
    Connected,
    KeepModel,
    ModelRejected,
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
from edge_agent.trainer import Trainer
from fedmq.fleet_schedule import FleetSchedule
from protocol import Publish
from transport.backoff import Backoff
from transport.connection import BrokerURL, Session, make_client, refused_for_good
from transport.link import refuses_mqtt5

log = logging.getLogger("fedmq.swarm")

#: members with a CONNECT sent and no CONNACK yet (Mosquitto's listen backlog is 100)
MAX_CONNECTING = 64
#: seconds between keepalive checks (paho's loop_misc) of every member
MISC_INTERVAL_S = 1.0
#: how long a stopping swarm waits for its members' goodbyes to be written
FLUSH_TIMEOUT_S = 10.0
#: file descriptors a process needs beyond one socket per member
SPARE_FDS = 64


class MemberState(enum.Enum):
    """Where one member's connection stands."""

    #: not connected yet, queued for its first connect
    NEW = "new"
    #: CONNECT sent, CONNACK awaited
    CONNECTING = "connecting"
    #: CONNACK accepted: subscribed and serving rounds
    ONLINE = "online"
    #: connection lost; reconnects at ``retry_at``
    WAITING = "waiting"
    #: offline presence and DISCONNECT queued
    LEAVING = "leaving"
    #: disconnected for good (left, or refused by the broker)
    GONE = "gone"


@dataclass(eq=False)
class Member:
    """One simulated device: its core, trainer, client and connection state."""

    core: AgentCore
    trainer: Trainer
    client: mqtt.Client
    state: MemberState = MemberState.NEW
    retry_at: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    mqtt5: bool = True
    #: CONNECT sent, no CONNACK yet on this connection
    awaiting_connack: bool = False
    rounds_trained: int = 0
    finished: bool = False
    refused: str | None = None
    #: the agent index in the fleet schedule
    index: int = 0
    #: a training result held back by the member's speed class: (due, TrainingDone)
    held_back: tuple[float, TrainingDone] | None = None
    #: offline by the schedule: disconnected on purpose, back when the schedule says
    away: bool = False


@dataclass(frozen=True, slots=True)
class _Refused:
    why: str


@dataclass(frozen=True, slots=True)
class _Lost:
    pass


@dataclass(frozen=True, slots=True)
class _NoMqtt5:
    """The broker refused this member's MQTT 5 CONNECT: rebuild it for 3.1.1."""


_Inbound = AgentEvent | _Refused | _Lost | _NoMqtt5


@dataclass
class SwarmStats:
    """What a swarm did, for the caller's report."""

    members: int
    rounds_trained: int = 0
    updates_sent: int = 0
    reconnects: int = 0
    refused: list[str] = field(default_factory=list)


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to ``needed`` (capped at the hard limit).

    Returns the soft limit now in force; the caller decides whether it suffices.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class Swarm:
    """Runs ``agents`` against ``broker`` on the calling thread until they are done."""

    def __init__(
        self,
        agents: Sequence[tuple[AgentCore, Trainer]],
        broker: BrokerURL,
        *,
        mqtt5: bool = True,
        keepalive_s: int = 60,
        exit_when_done: bool = True,
        schedule: FleetSchedule | None = None,
        first: int = 0,
        source_address: str = "",
    ) -> None:
        self._broker = broker
        #: the local address members connect from ("" lets the kernel choose): on one
        #: machine a source address has one ephemeral port range (about 28,000 ports), so a
        #: fleet larger than that spreads its processes over several loopback addresses
        self._source = source_address
        self._schedule = schedule
        self._started = time.monotonic()
        self._mqtt5 = mqtt5
        self._exit_when_done = exit_when_done
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._inbox: deque[tuple[Member, _Inbound]] = deque()
        self._stopping = False
        self._keepalive_s = keepalive_s
        self._counts: dict[MemberState, int] = dict.fromkeys(MemberState, 0)
        self._counts[MemberState.NEW] = len(agents)
        #: (retry_at, tie-break, member) of members in WAITING
        self._retries: list[tuple[float, int, Member]] = []
        self.stats = SwarmStats(members=len(agents))
        self.members = [self._member(core, trainer, keepalive_s) for core, trainer in agents]
        for k, member in enumerate(self.members):
            member.index = first + k

    def _member(self, core: AgentCore, trainer: Trainer, keepalive_s: int) -> Member:
        member = Member(core, trainer, self._client(core, keepalive_s, self._mqtt5),
                        mqtt5=self._mqtt5)
        member.client.user_data_set(member)
        return member

    def _client(self, core: AgentCore, keepalive_s: int, mqtt5: bool) -> mqtt.Client:
        session = Session(
            client_id=f"fedmq-{core.job}-{core.agent}", mqtt5=mqtt5, keepalive_s=keepalive_s
        )
        client = make_client(self._broker, session, will=core.will())
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _rebuild_for_311(self, member: Member) -> None:
        """Replace a member's MQTT 5 client by a 3.1.1 one (the old socket is closed)."""
        self._mqtt5 = False
        with contextlib.suppress(OSError, ValueError):
            member.client.disconnect()
            member.client.loop_write()
        member.client = self._client(member.core, self._keepalive_s, mqtt5=False)
        member.client.user_data_set(member)
        member.mqtt5 = False

    # --- paho callbacks: all on the loop thread; they touch the selector or hand off ---------

    def _on_socket_open(self, _c: mqtt.Client, member: Member, sock: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, member)

    def _on_socket_close(self, _c: mqtt.Client, _m: Member, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):  # never registered, or already gone
            self._sel.unregister(sock)

    def _on_register_write(self, _c: mqtt.Client, member: Member, sock: Any) -> None:
        self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, member)

    def _on_unregister_write(self, _c: mqtt.Client, member: Member, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):  # closing: unregistered on close
            self._sel.modify(sock, selectors.EVENT_READ, member)

    def _on_connect(self, client: mqtt.Client, member: Member, _f: Any, rc: Any, _p: Any) -> None:
        member.awaiting_connack = False
        if rc.is_failure:
            if member.mqtt5 and refuses_mqtt5(rc):
                self._inbox.append((member, _NoMqtt5()))
                return
            why = refused_for_good(rc)
            log.warning("%s: connection refused: %s", member.core.agent, rc)
            if why is not None:
                self._inbox.append((member, _Refused(why)))
            return
        self._set_state(member, MemberState.ONLINE)
        member.backoff.reset()
        client.subscribe(member.core.subscriptions)
        self._inbox.append((member, Connected()))

    def _on_disconnect(self, _c: mqtt.Client, member: Member, _f: Any, rc: Any, _p: Any) -> None:
        if member.awaiting_connack and member.mqtt5:
            member.awaiting_connack = False
            self._inbox.append((member, _NoMqtt5()))
            return
        self._inbox.append((member, _Lost()))

    def _on_message(self, _c: mqtt.Client, member: Member, message: mqtt.MQTTMessage) -> None:
        self._inbox.append((member, member.core.arrived(message.topic, bytes(message.payload))))

    # --- the loop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every member to go offline and :meth:`run` to return; safe from any thread."""
        self._stopping = True
        with contextlib.suppress(OSError):  # a wake-up is already pending, or the swarm closed
            self._wake_w.send(b"x")

    def run(self) -> SwarmStats:
        """Connect every member and serve rounds until all are done (or stopped)."""
        raise_fd_limit(len(self.members) + SPARE_FDS)
        queued = deque(self.members)
        next_misc = time.monotonic() + MISC_INTERVAL_S
        flush_deadline: float | None = None
        try:
            while not self._all_gone():
                now = time.monotonic()
                if self._stopping and flush_deadline is None:
                    flush_deadline = now + FLUSH_TIMEOUT_S
                    queued.clear()
                    for member in self.members:
                        self._leave(member)
                if flush_deadline is not None and now >= flush_deadline:
                    log.warning("swarm: goodbyes not flushed within %.0f s", FLUSH_TIMEOUT_S)
                    break
                self._start_connects(queued, now)
                self._retry_lost(now)
                self._follow_schedule(now)
                self._poll(self._timeout(next_misc, now))
                self._drain()
                if time.monotonic() >= next_misc:
                    next_misc = time.monotonic() + MISC_INTERVAL_S
                    for member in self.members:
                        if member.client.socket() is not None:
                            member.client.loop_misc()
        finally:
            self._close()
        return self.stats

    def _set_state(self, member: Member, state: MemberState) -> None:
        self._counts[member.state] -= 1
        self._counts[state] += 1
        member.state = state

    def _all_gone(self) -> bool:
        return self._counts[MemberState.GONE] == len(self.members)

    def _timeout(self, next_misc: float, now: float) -> float:
        wake = min(next_misc, self._retries[0][0]) if self._retries else next_misc
        if self._schedule is not None:  # a held-back result, or an agent going or coming
            wake = min([wake, now + 0.05, *(m.held_back[0] for m in self.members
                                            if m.held_back is not None)])
        return max(0.0, wake - now)

    def _follow_schedule(self, now: float) -> None:
        """Release held-back results that are due; take members offline and back."""
        schedule = self._schedule
        if schedule is None or self._stopping:
            return
        for member in self.members:
            if member.held_back is not None and member.held_back[0] <= now:
                _, done = member.held_back
                member.held_back = None
                self._feed(member, done)
            if member.index not in schedule.flaky or member.state is MemberState.GONE:
                continue
            online = schedule.online(member.index, now - self._started)
            if not online and not member.away and member.state is MemberState.ONLINE:
                member.away = True
                if member.held_back is not None:  # the device went away mid-training
                    key = member.held_back[1].key
                    member.held_back = None
                    self._feed(member, TrainingFailed(key, "went offline"))
                self._feed(member, ShutdownRequested())
                member.client.disconnect()
            elif online and member.away and member.state is MemberState.WAITING:
                member.away = False
                self._connect(member, now, first=False)

    def _start_connects(self, queued: deque[Member], now: float) -> None:
        while queued and self._counts[MemberState.CONNECTING] < MAX_CONNECTING:
            self._connect(queued.popleft(), now, first=True)

    def _retry_lost(self, now: float) -> None:
        while self._retries and self._retries[0][0] <= now:
            _, _, member = heapq.heappop(self._retries)
            if member.state is MemberState.WAITING:
                self.stats.reconnects += 1
                self._connect(member, now, first=False)

    def _connect(self, member: Member, now: float, *, first: bool) -> None:
        if member.mqtt5 and not self._mqtt5:  # another member found the broker speaks 3.1.1
            self._rebuild_for_311(member)
            first = True
        self._set_state(member, MemberState.CONNECTING)
        member.awaiting_connack = True
        try:
            if first:
                properties = None
                if member.mqtt5:
                    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    properties.SessionExpiryInterval = 0
                member.client.connect(
                    self._broker.host,
                    self._broker.port,
                    keepalive=self._keepalive_s,
                    bind_address=self._source,
                    properties=properties,
                )
            else:
                member.client.reconnect()
        except OSError as exc:
            log.info("%s: connect failed: %s", member.core.agent, exc)
            self._wait_to_retry(member, now)

    def _wait_to_retry(self, member: Member, now: float) -> None:
        self._set_state(member, MemberState.WAITING)
        member.retry_at = now + member.backoff.next_delay()
        heapq.heappush(self._retries, (member.retry_at, id(member), member))

    def _poll(self, timeout: float) -> None:
        for key, mask in self._sel.select(timeout):
            member = key.data
            if member is None:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
                continue
            client = member.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()

    def _drain(self) -> None:
        while self._inbox:
            member, item = self._inbox.popleft()
            if isinstance(item, _NoMqtt5):
                if member.state is not MemberState.GONE:
                    log.warning("%s: the broker refuses MQTT 5; falling back to 3.1.1",
                                member.core.agent)
                    self._rebuild_for_311(member)
                    self._set_state(member, MemberState.NEW)
                    self._connect(member, time.monotonic(), first=True)
            elif isinstance(item, _Lost):
                self._lost(member)
            elif isinstance(item, _Refused):
                member.refused = item.why
                self._set_state(member, MemberState.GONE)
                self.stats.refused.append(item.why)
                log.error("%s: %s", member.core.agent, item.why)
            elif member.state is not MemberState.GONE:
                self._feed(member, item)
                if member.finished and self._exit_when_done:
                    self._leave(member)

    def _lost(self, member: Member) -> None:
        if member.state is MemberState.GONE:
            return
        if member.state is MemberState.LEAVING or self._stopping:
            self._set_state(member, MemberState.GONE)
            return
        if member.away:  # offline by the schedule: it reconnects when the schedule says
            self._set_state(member, MemberState.WAITING)
            return
        log.warning("%s: connection lost; reconnecting", member.core.agent)
        self._wait_to_retry(member, time.monotonic())

    def _leave(self, member: Member) -> None:
        if member.state is MemberState.ONLINE:
            self._feed(member, ShutdownRequested())
            self._set_state(member, MemberState.LEAVING)
            member.client.disconnect()
        elif member.state not in (MemberState.LEAVING, MemberState.GONE):
            self._set_state(member, MemberState.GONE)
            member.client.disconnect()

    # --- driving one core (as edge_agent.mqtt.AgentNode does, minus the threads) ------------

    def _feed(self, member: Member, event: AgentEvent) -> None:
        pending: deque[AgentAction] = deque(self._handle(member, event))
        while pending:
            follow_up = self._carry_out(member, pending.popleft())
            if follow_up is not None:
                pending.extend(self._handle(member, follow_up))

    @staticmethod
    def _handle(member: Member, event: AgentEvent) -> list[AgentAction]:
        return member.core.handle(event, time.monotonic(), wall=time.time())

    def _carry_out(self, member: Member, action: AgentAction) -> AgentEvent | None:
        match action:
            case Publish(topic=topic, payload=payload, retain=retain):
                member.client.publish(topic, payload, qos=1, retain=retain)
            case Subscribe(topics=topics):
                member.client.subscribe([(topic, 1) for topic in topics])
            case Train(key=key, model=model):
                return self._train(member, key, model)
            case ModelRejected(reason=reason, detail=detail):
                log.warning("%s: rejected a model: %s: %s", member.core.agent, reason.value, detail)
            case UpdateSent():
                self.stats.updates_sent += 1
            case RunFinished():
                member.finished = True
            case SaveResidual() | KeepModel():
                pass  # simulated devices keep their residual and model in memory only
            case Subscribe(topics=topics):
                member.client.subscribe([(topic, 1) for topic in topics])
            case Unsubscribe(topics=topics):
                member.client.unsubscribe(list(topics))
            case _:
                assert_never(action)
        return None

    def _train(self, member: Member, key: tuple[str, int, str], model: Any) -> AgentEvent | None:
        started = time.perf_counter()
        try:
            result = member.trainer.train(model.weights, model.plan, model.round)
        except Exception as exc:  # the trainer is user code: decline, log, carry on
            log.error("%s: training failed:\n%s", member.core.agent, traceback.format_exc())
            return TrainingFailed(key, f"training failed: {type(exc).__name__}: {exc}")
        member.rounds_trained += 1
        self.stats.rounds_trained += 1
        done = TrainingDone(key, result, time.perf_counter() - started)
        delay = self._schedule.delay_s(member.index) if self._schedule is not None else 0.0
        if delay > 0:  # the speed class: the result is due later, the loop serves on
            member.held_back = (time.monotonic() + delay, done)
            return None
        return done

    def _close(self) -> None:
        for member in self.members:
            if member.client.socket() is not None:
                member.client.disconnect()
                member.client.loop_write()  # best effort: the DISCONNECT, then the close
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
