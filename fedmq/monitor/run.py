"""``fedmq monitor``: a paho subscriber feeding :class:`MonitorState`, and its three outputs.

paho's callbacks only copy ``(topic, payload, retain)`` into a bounded queue;
the main thread owns the state, the clock and the output. Output is a live
rich view on a terminal, one text line per event on a pipe, or one JSON object
per event with ``--json``. It subscribes to status, metrics and presence (and
the model topic only with ``--model``: models are megabytes), never to updates,
so it needs no more than read access to those topics, and nothing of the
coordinator's process or files.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from fedmq.monitor.events import MonitorEvent, RunFinished, describe, to_json
from fedmq.monitor.state import MonitorState
from protocol import Phase, check_id
from protocol.topics import PREFIX
from transport.connection import BrokerURL, Session, connect, make_client

log = logging.getLogger("fedmq.monitor")

#: how often the live view redraws (for the deadline countdown) when nothing arrives
REFRESH_S = 0.25


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    retained: bool


@dataclass(frozen=True, slots=True)
class LinkChanged:
    """The adapter's own news: subscribed, or the connection dropped or was refused."""

    up: bool
    detail: str


def monitor_topics(job: str | None, model: bool) -> list[str]:
    """What the monitor subscribes to: one job, or every job (``+``)."""
    base = f"{PREFIX}/{check_id(job, 'job') if job is not None else '+'}"
    kinds = ["status", "metrics", "agents/+"] + (["model"] if model else [])
    return [f"{base}/{kind}" for kind in kinds]


class Monitor:
    """Subscribes, feeds the state, and hands each batch of events to ``emit``."""

    def __init__(
        self,
        broker: BrokerURL,
        session: Session,
        *,
        job: str | None = None,
        model: bool = False,
        queue_size: int = 10_000,
    ) -> None:
        self.broker = broker
        self.job = job
        self.topics = monitor_topics(job, model)
        self.state = MonitorState()
        self.connected = False
        self.dropped = 0
        self.bugs = 0
        self._session = session
        self._queue: queue.Queue[_Message | LinkChanged] = queue.Queue(queue_size)
        self._client = make_client(broker, self._session)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # --- paho callbacks: hand off and return -------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            self._put(LinkChanged(False, f"connection refused: {reason_code}"))
            return
        client.subscribe([(topic, 1) for topic in self.topics])

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        refused = [str(c) for c in codes if getattr(c, "is_failure", False)]
        detail = f"refused {', '.join(refused)}" if refused else "subscribed"
        self._put(LinkChanged(not refused, detail))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        self._put(LinkChanged(False, f"disconnected: {reason_code}"))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._put(_Message(message.topic, bytes(message.payload), bool(message.retain)))

    def _put(self, item: _Message | LinkChanged) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.error("monitor queue full (%d); dropped a message", self._queue.maxsize)

    # --- the owning thread ----------------------------------------------------------------

    def run(
        self,
        emit: Callable[[list[MonitorEvent], float], None],
        on_link: Callable[[LinkChanged], None] | None = None,
        refresh: Callable[[float], None] | None = None,
        exit_when_done: bool = False,
    ) -> int:
        """Loop until Ctrl-C, or with ``exit_when_done`` until every job seen has finished.

        Returns 0, or 1 when exiting on a failed run.
        """
        connect(self._client, self.broker, self._session)
        try:
            while True:
                for item in self._batch():
                    now = time.time()
                    if isinstance(item, LinkChanged):
                        self.connected = item.up
                        if on_link is not None:
                            on_link(item)
                    else:
                        emit(self._apply(item, now), now)
                if refresh is not None:
                    refresh(time.time())
                if exit_when_done and self._all_finished():
                    return self._exit_code()
        except KeyboardInterrupt:
            return 0
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def _batch(self, limit: int = 1000) -> list[_Message | LinkChanged]:
        """What has arrived: waits up to :data:`REFRESH_S` for the first item, not the rest."""
        try:
            batch = [self._queue.get(timeout=REFRESH_S)]
        except queue.Empty:
            return []
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _apply(self, item: _Message, now: float) -> list[MonitorEvent]:
        try:
            return self.state.apply(item.topic, item.payload, item.retained, now)
        except Exception:  # a bug in the state model must not kill the monitor; count it
            self.bugs += 1
            log.error("bug while applying %s:\n%s", item.topic, traceback.format_exc())
            return []

    def _all_finished(self) -> bool:
        jobs = self.state.jobs.values()
        watched = [v for v in jobs if v.status is not None]
        return bool(watched) and all(v.finished for v in watched)

    def _exit_code(self) -> int:
        failed = any(
            v.status is not None and v.status.phase is Phase.FAILED
            for v in self.state.jobs.values()
        )
        return 1 if failed else 0


# --- the three outputs ---------------------------------------------------------------------


def run_json(monitor: Monitor, out: TextIO, exit_when_done: bool) -> int:
    """One JSON object per line: every event, plus the adapter's link changes."""

    def emit(events: list[MonitorEvent], now: float) -> None:
        for event in events:
            out.write(json.dumps(to_json(event, now)) + "\n")
        out.flush()

    def on_link(link: LinkChanged) -> None:
        event = "subscribed" if link.up else "disconnected"
        doc = {"event": event, "broker": str(monitor.broker), "topics": monitor.topics,
               "detail": link.detail, "seen_at": time.time()}
        out.write(json.dumps(doc) + "\n")
        out.flush()

    return monitor.run(emit, on_link, exit_when_done=exit_when_done)


def run_lines(monitor: Monitor, out: TextIO, exit_when_done: bool) -> int:
    """One human-readable line per event, for a pipe or a log file."""

    def emit(events: list[MonitorEvent], _now: float) -> None:
        for event in events:
            print(describe(event), file=out, flush=True)

    def on_link(link: LinkChanged) -> None:
        print(f"{monitor.broker}: {link.detail}", file=out, flush=True)

    return monitor.run(emit, on_link, exit_when_done=exit_when_done)


def run_live(monitor: Monitor, out: TextIO, exit_when_done: bool) -> int:
    """The live rich view, redrawn on every message and every :data:`REFRESH_S`."""
    from rich.console import Console
    from rich.live import Live

    from fedmq.monitor.view import render

    console = Console(file=out)
    finished: list[str] = []

    def frame(now: float) -> Any:
        return render(monitor.state, now, broker=str(monitor.broker),
                      connected=monitor.connected, job=monitor.job)

    def emit(events: list[MonitorEvent], _now: float) -> None:
        finished.extend(describe(e) for e in events if isinstance(e, RunFinished))

    with Live(frame(time.time()), console=console, auto_refresh=False, screen=False) as live:
        code = monitor.run(emit, refresh=lambda now: live.update(frame(now), refresh=True),
                           exit_when_done=exit_when_done)
    for line in finished[-1:]:
        console.print(line)
    return code


def main(
    broker: BrokerURL,
    *,
    job: str | None,
    as_json: bool,
    model: bool,
    exit_when_done: bool,
    mqtt5: bool = True,
    ca_file: Path | None = None,
    out: TextIO | None = None,
) -> int:
    """Entry point of ``fedmq monitor``: pick the output for ``out`` and run."""
    stream = out if out is not None else sys.stdout
    session = Session(client_id=f"fedmq-monitor-{uuid.uuid4().hex[:8]}", mqtt5=mqtt5,
                      ca_file=ca_file)
    monitor = Monitor(broker, session, job=job, model=model)
    if as_json:
        return run_json(monitor, stream, exit_when_done)
    if not stream.isatty():
        return run_lines(monitor, stream, exit_when_done)
    try:
        return run_live(monitor, stream, exit_when_done)
    except ImportError:
        print("fedmq monitor: the live view needs rich (pip install 'fedmq[monitor]'); "
              "printing lines", file=sys.stderr)
        return run_lines(monitor, stream, exit_when_done)
