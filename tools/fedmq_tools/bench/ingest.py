"""``fedmq bench ingest``: how many updates a second the coordinator takes in.

"Takes in" is everything the coordinator does with one update of an open
round: decode the envelope, validate it, decode the codec's tensors, add them
into the streaming FedAvg sum, and build the status it publishes after each
accepted update. Two ways, per task and codec:

- ``pure``: the round machine alone (:meth:`coordinator.Rounds.handle`), no
  network; the clock runs only around ``handle`` (payloads are built outside it).
  Beside it, in the same run and in alternating blocks of updates so that a
  machine's load falls on both alike, the plain inexact path for the same
  payloads (:class:`PlainPath`: msgpack decode, the codec's decode with its
  finiteness check, a float64 multiply-add), and the row carries both rates and
  their ratio; then the exact sum's add alone, compiled and numpy, against the
  plain multiply-add, on the decoded deltas (``add_us``).
- ``broker``: a real :class:`~coordinator.mqtt.CoordinatorNode` on a private
  Mosquitto, fed by a publisher in another process over one MQTT connection;
  the rate is accepted updates over the span from the first accepted update to
  the last (seen through ``on_action``). The publisher's own rate, and the CPU
  seconds of broker, coordinator process and publisher from the round's
  announcement to the last accepted update, show who set the pace.

Every row also has ``foreign_cpu_s``: the CPU seconds the rest of the machine
used during the measurement (``/proc/stat`` minus our processes), i.e. how
disturbed it was.

The deltas are real: round 1 of W1's agents 0..3 (torch, 1 epoch), reused in
turn, so entropy coders see real weight statistics. A round's cohort is one
larger than the number of updates sent, so no round closes while measuring.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from coordinator import (
    Action,
    PartialMerged,
    PresenceArrived,
    RoundConfig,
    RoundOpened,
    Rounds,
    UpdateAccepted,
    UpdateArrived,
)
from coordinator.exactsum import ExactSum
from coordinator.spread import AVAILABLE as COMPILED_AVAILABLE
from fedmq.broker import LocalBroker
from fedmq.launch import Connection, build_coordinator
from fedmq.tasks import DataConfig, agent_data, get_task
from fedmq_tools.bench.measure import cpu_s, system_cpu_s, usage
from protocol import (
    Presence,
    Topics,
    Update,
    Weights,
    check_codec,
    decode_delta,
    decode_model,
    encode_delta,
    encode_presence,
    encode_update,
    weights_digest,
)
from transport.connection import BrokerURL

#: codec specs measured unless ``--codec`` names others (protocol/compress.py's grammar)
DEFAULT_CODECS = ("none", "fp16", "int8", "qsgd", "topk", "fp16+zstd", "topk+int8+zstd")
DEFAULT_TASKS = ("mnist-2nn", "mnist-cnn")
#: updates per measurement; the CNN's are 6.6 MB raw, and a coordinator that falls behind
#: its publisher holds them all in its inbound queue
DEFAULT_UPDATES = {"mnist-2nn": 500, "mnist-cnn": 100}
FALLBACK_UPDATES = 500
#: distinct real deltas cycled through (W1 agents 0..3, round 1)
DISTINCT_DELTAS = 4
#: updates per block when the exact and the plain path take turns
BLOCK = 50
#: adds per figure in ``add_us``
SUM_ADDS = 200


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """Which tasks, codecs and modes to measure, and with how many updates."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    codecs: tuple[str, ...] = DEFAULT_CODECS
    modes: tuple[str, ...] = ("pure", "broker")
    #: per measurement; None means DEFAULT_UPDATES for the task
    updates: int | None = None
    data_dir: Path | None = None
    timeout_s: float = 600.0
    #: a running broker to use; by default each broker measurement starts its own
    broker: LocalBroker | None = None


def job_name(task_name: str, codec: str, mode: str) -> str:
    """A job id per measurement, so measurements sharing a broker never meet."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"ingest-{task_name}-{codec}-{mode}")[:64]


def real_deltas(task_name: str, data_dir: Path | None) -> tuple[Weights, list[Weights]]:
    """The initial model and the round-1 deltas of W1's first agents for ``task_name``."""
    from edge_agent.torch_trainer import TorchTrainer, initial_weights

    task = get_task(task_name)
    data = DataConfig(data_dir=data_dir)
    weights = initial_weights(task.model, 0)
    deltas = []
    for k in range(DISTINCT_DELTAS):
        x, y = agent_data(task, data, k, 20, "iid")
        local = TorchTrainer(task.model, task.kind, x, y, index=k).train(weights, task.plan, 1)
        deltas.append({n: local.weights[n] - w for n, w in weights.items()})
    return weights, deltas


def encoded_tensors(deltas: list[Weights], codec: str) -> list[tuple[dict[str, Any], ...]]:
    """Each delta's tensor entries under ``codec`` (seeded, as an agent's round 1)."""
    return [
        tuple(encode_delta(d, codec, np.random.default_rng([0, 1, k])))
        for k, d in enumerate(deltas)
    ]


def update_payload(job: str, agent: str, model_id: str, tensors: tuple[dict[str, Any], ...],
                   codec: str) -> bytes:
    """One agent's round-1 update carrying ``tensors``."""
    update = Update(job=job, agent=agent, round=1, model_id=model_id, samples=500, codec=codec,
                    tensors=tensors, metrics={"loss": 1.0, "accuracy": 0.5})
    return encode_update(update)


def presence_payload(agent: str) -> bytes:
    return encode_presence(Presence(agent=agent, online=True, samples=500, trainer="bench"))


def ingest_config(job: str, task_name: str, codec: str, cohort: int) -> RoundConfig:
    """One round that waits for ``cohort`` agents and never closes while measured."""
    return RoundConfig(job=job, task=task_name, rounds=1, plan=get_task(task_name).plan,
                       codec=codec, min_agents=cohort, deadline_s=3600.0, evaluate=False)


class PlainPath:
    """The inexact reference: what ingest would cost with a float64 running sum and no
    round machine (msgpack decode, the codec's decode with its finiteness check, a
    float64 multiply-add into preallocated lanes)."""

    def __init__(self, weights: Weights, codec: str) -> None:
        self._codec = codec
        self._shapes = {name: tuple(a.shape) for name, a in weights.items()}
        self._sums = {name: np.zeros(a.size, np.float64) for name, a in weights.items()}
        self._scratch = np.empty(max(a.size for a in weights.values()), np.float64)

    def add(self, payload: bytes) -> None:
        doc = msgpack.unpackb(payload)
        delta = decode_delta(doc["tensors"], self._codec, self._shapes)
        w = float(doc["samples"])
        for name, values in delta.items():
            term = self._scratch[: values.size]
            np.multiply(values.reshape(-1), w, out=term)
            self._sums[name] += term


def _add_us(deltas: list[Weights]) -> dict[str, float]:
    """Microseconds per add of one decoded delta: the exact sum compiled and with numpy
    alone, and the plain float64 multiply-add, taking turns."""
    flats = [[a.reshape(-1) for a in d.values()] for d in deltas]
    size = sum(a.size for a in flats[0])
    plain, scratch = np.zeros(size), np.empty(size)

    def multiply_add(parts: list[Any]) -> None:
        offset = 0
        for a in parts:
            np.multiply(a, 500.0, out=scratch[offset : offset + a.size])
            offset += a.size
        np.add(plain, scratch, out=plain)

    sums: dict[str, Callable[[list[Any]], None]] = {"plain_multiply_add": multiply_add}
    kinds = [("numpy", False)] + ([("compiled", True)] if COMPILED_AVAILABLE else [])
    for name, compiled in kinds:
        total = ExactSum(size, compiled=compiled)
        total.add_parts(flats[0], 500.0)  # compiles, makes the bins
        sums[name] = functools.partial(total.add_parts, weight=500.0)
    spent = dict.fromkeys(sums, 0.0)
    for block in range(0, SUM_ADDS, BLOCK):
        for name, add in sums.items():
            began = time.thread_time()
            for i in range(block, block + BLOCK):
                add(flats[i % len(flats)])
            spent[name] += time.thread_time() - began
    return {name: round(s / SUM_ADDS * 1e6, 1) for name, s in spent.items()}


def ingest_pure(task_name: str, codec: str, weights: Weights, deltas: list[Weights],
                updates: int) -> dict[str, Any]:
    """Feed ``updates`` updates to a bare round machine, and the same payloads to the
    plain path, block by block in turn; time only ``handle`` and ``PlainPath.add``."""
    job = job_name(task_name, codec, "pure")
    rounds = Rounds(ingest_config(job, task_name, codec, updates + 1), weights, run="ingest")
    for i in range(updates + 1):
        rounds.handle(PresenceArrived(f"agent-{i}", presence_payload(f"agent-{i}")), 0.0)
    model_id = weights_digest(weights)
    tensors = encoded_tensors(deltas, codec)
    plain = PlainPath(weights, codec)
    busy, plain_busy, size = 0.0, 0.0, 0
    machine, ours = system_cpu_s(), cpu_s(["self"])
    for first in range(0, updates, BLOCK):
        block = [
            update_payload(job, f"agent-{i}", model_id, tensors[i % len(tensors)], codec)
            for i in range(first, min(first + BLOCK, updates))
        ]
        size += sum(len(p) for p in block)
        began = time.thread_time()
        answers = [rounds.handle(UpdateArrived(f"agent-{first + k}", p), 1.0)
                   for k, p in enumerate(block)]
        busy += time.thread_time() - began
        began = time.thread_time()
        for payload in block:
            plain.add(payload)
        plain_busy += time.thread_time() - began
        for k, actions in enumerate(answers):
            if not any(isinstance(a, UpdateAccepted) for a in actions):
                raise RuntimeError(f"update {first + k} under {codec} was not accepted: "
                                   f"{actions[0]}")
    foreign = (system_cpu_s() - machine) - (cpu_s(["self"]) - ours)
    rate, plain_rate = updates / busy, updates / plain_busy
    return {"updates": updates, "seconds": round(busy, 4),
            "updates_per_s": round(rate, 1),
            "plain_updates_per_s": round(plain_rate, 1),
            "ratio_to_plain": round(rate / plain_rate, 3),
            "exact_sum": "compiled" if COMPILED_AVAILABLE else "numpy",
            "add_us": _add_us(decoded(deltas, codec)),
            "mean_update_bytes": size // updates,
            "foreign_cpu_s": round(max(foreign, 0.0), 2)}


def decoded(deltas: list[Weights], codec: str) -> list[Weights]:
    """The deltas as the coordinator decodes them under ``codec``."""
    shapes = {name: tuple(a.shape) for name, a in deltas[0].items()}
    return [decode_delta(list(t), codec, shapes) for t in encoded_tensors(deltas, codec)]


@dataclass(frozen=True, slots=True)
class PublisherJob:
    """What the publisher process sends, and where."""

    url: str
    job: str
    task: str
    codec: str
    updates: int
    data_dir: Path | None


def publish_updates(job: PublisherJob, report: Any) -> None:
    """The publisher process: presence for ``updates + 1`` agents, then, once round 1
    is announced, ``updates`` updates as fast as one QoS 1 connection carries them;
    puts its own rate (updates/s, until the last PUBACK) and the CPU seconds it spent
    publishing on ``report``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    weights, deltas = real_deltas(job.task, job.data_dir)
    tensors = encoded_tensors(deltas, job.codec)
    model_id, updates = weights_digest(weights), job.updates
    # built before the round opens, so that packing them does not pace the measurement
    payloads = [
        update_payload(job.job, f"agent-{i}", model_id, tensors[i % len(tensors)], job.codec)
        for i in range(updates)
    ]
    topics, broker = Topics(job.job), BrokerURL.parse(job.url)
    announced: list[bytes] = []
    got_model = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        announced.append(bytes(msg.payload))
        got_model.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fedmq-ingest-publisher",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(topics.model, qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    for i in range(updates + 1):
        client.publish(topics.presence(f"agent-{i}"), presence_payload(f"agent-{i}"), qos=1)
    if not got_model.wait(120):
        raise TimeoutError("no model announced")
    if decode_model(announced[-1]).model_id != model_id:
        raise RuntimeError("the coordinator announced another initial model")
    began, cpu_began = time.monotonic(), time.process_time()
    info = None
    for i, payload in enumerate(payloads):
        info = client.publish(topics.update(f"agent-{i}"), payload, qos=1)
    assert info is not None
    info.wait_for_publish(300)
    report.put((updates / (time.monotonic() - began), time.process_time() - cpu_began))
    client.disconnect()
    client.loop_stop()


@dataclass
class Accepted:
    """Observes the coordinator: CPU when the round opened and when the last update was
    counted (machine, broker, this process), and when each update was counted: accepted
    itself, or merged as a contributor of an ingest worker's partial sum."""

    target: int
    broker_pid: int
    times: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    cpu: list[tuple[float, float, float]] = field(default_factory=list)

    def _snapshot(self) -> None:
        self.cpu.append((system_cpu_s(), usage(self.broker_pid).cpu_s, usage().cpu_s))

    def __call__(self, action: Action) -> None:
        if isinstance(action, RoundOpened):
            self._snapshot()
            return
        if isinstance(action, UpdateAccepted):
            self.times.append(time.monotonic())
        elif isinstance(action, PartialMerged):
            self.times.extend([time.monotonic()] * action.contributors)
        else:
            return
        if len(self.times) >= self.target and not self.done.is_set():
            self._snapshot()
            self.done.set()


def ingest_broker(task_name: str, codec: str, updates: int, opts: IngestOptions) -> dict[str, Any]:
    """A real coordinator node on a broker (``opts.broker``, or a fresh private one),
    fed by a publisher process."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process running threads
    report = ctx.Queue()
    job = job_name(task_name, codec, "broker")
    with ExitStack() as stack:
        broker = opts.broker or stack.enter_context(LocalBroker())
        seen = Accepted(updates, broker.pid or 0)
        node = build_coordinator(ingest_config(job, task_name, codec, updates + 1),
                                 Connection(BrokerURL.parse(broker.url)),
                                 data=DataConfig(data_dir=opts.data_dir), run_dir=None,
                                 on_action=seen)
        runner = threading.Thread(target=node.run, name="coordinator", daemon=True)
        runner.start()
        spec = PublisherJob(broker.url, job, task_name, codec, updates, opts.data_dir)
        publisher = ctx.Process(target=publish_updates, args=(spec, report))
        publisher.start()
        finished = seen.done.wait(opts.timeout_s)
        node.stop("ingest measured")
        runner.join(30)
        publisher.join(60)
        if not finished:
            raise RuntimeError(f"{len(seen.times)} of {updates} updates accepted in time")
    span = seen.times[-1] - seen.times[0]
    rate, publisher_cpu = report.get(timeout=10)
    (machine0, broker0, self0), (machine1, broker1, self1) = seen.cpu
    foreign = (machine1 - machine0) - (broker1 - broker0) - (self1 - self0) - publisher_cpu
    return {"updates": updates, "seconds": round(span, 4),
            "updates_per_s": round((updates - 1) / span, 1),
            "publisher_updates_per_s": round(rate, 1),
            "cpu_s": {"broker": round(broker1 - broker0, 2),
                      "coordinator_process": round(self1 - self0, 2),
                      "publisher": round(publisher_cpu, 2)},
            "foreign_cpu_s": round(max(foreign, 0.0), 2),
            "dropped": node.dropped}


def run_ingest(opts: IngestOptions) -> dict[str, Any]:
    """Every (task, codec, mode) in ``opts``; one row each."""
    rows: list[dict[str, Any]] = []
    for task_name in opts.tasks:
        weights, deltas = real_deltas(task_name, opts.data_dir)
        updates = opts.updates or DEFAULT_UPDATES.get(task_name, FALLBACK_UPDATES)
        for codec in opts.codecs:
            check_codec(codec)
            for mode in opts.modes:
                if mode == "pure":
                    figures = ingest_pure(task_name, codec, weights, deltas, updates)
                else:
                    figures = ingest_broker(task_name, codec, updates, opts)
                row = {"task": task_name, "codec": codec, "mode": mode, **figures}
                rows.append(row)
                print(row_line(row), flush=True)
    return {"rows": rows}


def row_line(row: dict[str, Any]) -> str:
    extra = ""
    if "publisher_updates_per_s" in row:
        extra = f"  (publisher {row['publisher_updates_per_s']:.0f}/s)"
    size = f"  {row['mean_update_bytes'] / 1e3:.1f} kB/update" if "mean_update_bytes" in row else ""
    if "ratio_to_plain" in row:
        extra = (f"  (plain {row['plain_updates_per_s']:.0f}/s, ratio "
                 f"{row['ratio_to_plain']:.2f}; add us {row['add_us']})")
    return (
        f"{row['task']:<10} {row['codec']:<15} {row['mode']:<6} "
        f"{row['updates_per_s']:>9.1f} updates/s{size}{extra}  foreign CPU "
        f"{row['foreign_cpu_s']:.1f} s"
    )
