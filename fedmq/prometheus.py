"""The coordinator's optional Prometheus endpoint (``--metrics-port``).

:class:`MetricsExporter` is an ``on_action`` observer: every number it serves
comes from the round machine's actions (and the status documents among its
publishes), never from reaching into the machine, so it cannot change a run and
sees exactly what the topics show. It never raises into the coordinator's loop.
Metric names are part of the operations contract: see docs/WATCHING.md.
Imports prometheus_client, which only the ``monitor`` extra installs.
"""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from coordinator import Action, MessageRejected, RoundClosed, RoundOpened, UpdateAccepted
from protocol import (
    Phase,
    Publish,
    RejectReason,
    TopicKind,
    WireError,
    decode_status,
    parse_topic,
)

log = logging.getLogger("fedmq.prometheus")

#: round durations span a fraction of a second (the demo) to many minutes (phones)
DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: staleness in versions (FedBuff) or rounds (--carry-late): 0 is fresh
STALENESS_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100)


def parse_listen(spec: str) -> tuple[str, int]:
    """``PORT`` (loopback) or ``HOST:PORT`` -> (host, port).

    Raises:
        ValueError: for anything else.
    """
    host, _, port = spec.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--metrics-port wants PORT or HOST:PORT, got {spec!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--metrics-port {spec}: port out of range")
    return host.strip("[]") or "127.0.0.1", number


class MetricsExporter:
    """Turns coordinator actions into Prometheus metrics in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.run_info = Info("fedmq_run", "The job and run this coordinator drives", registry=r)
        self.phase = Enum(
            "fedmq_phase", "The coordinator's phase", states=[p.value for p in Phase], registry=r
        )
        self.round = Gauge("fedmq_round", "Number of the open (or last) round", registry=r)
        self.replies = Gauge("fedmq_round_replies", "Updates accepted in the open round",
                             registry=r)
        self.quorum = Gauge("fedmq_round_quorum", "Accepted updates that close the open round",
                            registry=r)
        self.agents_online = Gauge("fedmq_agents_online", "Agents whose presence is online",
                                   registry=r)
        self.rounds = Counter("fedmq_rounds", "Rounds closed", ["closed_by"], registry=r)
        self.accepted = Counter("fedmq_updates_accepted", "Updates accepted", registry=r)
        self.declined = Counter("fedmq_updates_declined", "Updates declined by agents",
                                registry=r)
        self.rejected = Counter("fedmq_updates_rejected", "Messages rejected, by reason",
                                ["reason"], registry=r)
        self.payload_bytes = Counter(
            "fedmq_payload_bytes", "Payload bytes of closed rounds: up (updates received) "
            "and down (model announcements times agents asked)", ["direction"], registry=r
        )
        self.duration = Histogram("fedmq_round_duration_seconds", "Seconds from announce to close",
                                  buckets=DURATION_BUCKETS_S, registry=r)
        self.accuracy = Gauge("fedmq_accuracy", "Test accuracy of the latest global model",
                              registry=r)
        self.loss = Gauge("fedmq_loss", "Test loss of the latest global model", registry=r)
        self.epsilon = Gauge("fedmq_dp_epsilon", "DP-FedAvg: the run's epsilon so far",
                             registry=r)
        # FedBuff and --carry-late (docs/STRATEGIES.md); in FedBuff fedmq_round is the model
        # version, fedmq_round_replies the buffer's fill and fedmq_round_quorum its K
        self.staleness = Histogram("fedmq_update_staleness", "Staleness tau of the updates "
                                   "each step applied", buckets=STALENESS_BUCKETS, registry=r)
        self.wasted = Counter("fedmq_updates_wasted", "Updates trained and thrown away for "
                              "arriving too late (rejected stale)", registry=r)
        self._info: tuple[str, str] | None = None
        self._server: WSGIServer | None = None

    def __call__(self, action: Action) -> None:
        match action:
            case RoundOpened(round_no=round_no, quorum=quorum):
                self.round.set(round_no)
                self.quorum.set(quorum)
                self.replies.set(0)
            case UpdateAccepted(accepted=accepted):
                self.accepted.inc()
                self.replies.set(accepted)
            case MessageRejected(reason=reason):
                self.rejected.labels(reason.value).inc()
                if reason is RejectReason.STALE:
                    self.wasted.inc()
            case RoundClosed(metrics=m):
                self.rounds.labels(m.closed_by.value).inc()
                self.declined.inc(m.declined)
                self.payload_bytes.labels("up").inc(m.bytes_up)
                self.payload_bytes.labels("down").inc(m.bytes_down)
                self.duration.observe(m.duration_s)
                if m.accuracy is not None:
                    self.accuracy.set(m.accuracy)
                if m.loss is not None:
                    self.loss.set(m.loss)
                if m.epsilon is not None:
                    self.epsilon.set(m.epsilon)
                for tau, count in (m.staleness or {}).items():
                    for _ in range(count):
                        self.staleness.observe(int(tau))
            case Publish(topic=topic, payload=payload):
                self._on_publish(topic, payload)
            case _:
                pass

    def _on_publish(self, topic: str, payload: bytes) -> None:
        try:
            if parse_topic(topic).kind is not TopicKind.STATUS:
                return
            status = decode_status(payload)
        except WireError as exc:  # our own status should always decode; say so if not
            log.error("could not read the coordinator's own status: %s", exc)
            return
        self.phase.state(status.phase.value)
        self.agents_online.set(status.agents_online)
        if self._info != (status.job, status.run):
            self._info = (status.job, status.run)
            self.run_info.info({"fedmq_job": status.job, "run": status.run,
                                "mode": status.mode})

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on a daemon thread; returns the bound port (for ``port=0``)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound: int = server.server_port
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
