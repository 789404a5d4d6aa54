"""``fedmq bench workers``: ingest through N ingest workers against the coordinator alone.

One invocation, one private Mosquitto per measurement, the same publisher process
and payloads as ``fedmq bench ingest --mode broker`` (round 1 of W1's agents, a
cohort one larger than the updates sent, so the round never closes while measuring):

- ``workers 0``: the coordinator takes the updates itself (the reference);
- ``workers N``: the coordinator runs with ``take_updates=False`` and N worker
  processes share ``update/+`` through the shared subscription ``$share/fedmq-JOB/...``,
  each admitting, summing and sending batches (docs/SCALE.md).

The rate is the updates the coordinator counted (accepted, or merged as partial
contributors) over the span from the first to the last; ``ratio_to_coordinator`` is
that rate over the reference's. Each row carries the CPU seconds of the broker, the
coordinator process, the publisher and the workers, and ``foreign_cpu_s``, since on a
machine with fewer cores than processes the workers compete with the broker and the
publisher for them.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from coordinator.site import Batching, SiteAggregator
from coordinator.site_mqtt import SiteNode
from coordinator.spread import AVAILABLE as COMPILED_AVAILABLE
from coordinator.spread import kernels
from fedmq.aggregator_cli import shared_group
from fedmq.broker import LocalBroker
from fedmq.launch import Connection, build_coordinator
from fedmq.tasks import DataConfig
from fedmq_tools.bench.ingest import (
    Accepted,
    IngestOptions,
    PublisherJob,
    ingest_config,
    job_name,
    publish_updates,
)
from transport.connection import BrokerURL


@dataclass(frozen=True, slots=True)
class WorkerJob:
    """What one worker process runs: job, task, codec and cohort rebuild its config."""

    url: str
    job: str
    task: str
    codec: str
    cohort: int
    worker: str
    batch: int


def run_worker(job: WorkerJob, ready: Any, stop: Any, report: Any) -> None:
    """A worker process: an ingest worker until ``stop`` is set; then the CPU seconds it
    spent from subscribing to stopping (its imports, numba's included, are start-up, as
    the coordinator's are: not ingest)."""
    if COMPILED_AVAILABLE:
        kernels()
    core = SiteAggregator(ingest_config(job.job, job.task, job.codec, job.cohort), site=job.worker,
                          batching=Batching(job.batch))
    url = BrokerURL.parse(job.url)
    node = SiteNode(core, url, url, shared_group=shared_group(job.job))
    runner = threading.Thread(target=node.run, daemon=True)
    runner.start()
    if node.subscribed.wait(60):
        ready.put(job.worker)
    began = time.process_time()
    stop.wait()
    node.stop("measured")
    runner.join(30)
    report.put(time.process_time() - began)


def ingest_through(task: str, codec: str, updates: int, *, workers: int, batch: int,
                   opts: IngestOptions) -> dict[str, Any]:
    """``updates`` updates into one coordinator: itself (``workers`` 0) or via workers."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process running threads
    ready, report, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    job = job_name(task, codec, f"w{workers}")
    with ExitStack() as stack:
        broker = stack.enter_context(LocalBroker())
        seen = Accepted(updates, broker.pid or 0)
        node = build_coordinator(ingest_config(job, task, codec, updates + 1),
                                 Connection(BrokerURL.parse(broker.url)),
                                 data=DataConfig(data_dir=opts.data_dir), run_dir=None,
                                 on_action=seen, take_updates=workers == 0)
        pool = [ctx.Process(target=run_worker, args=(WorkerJob(
            broker.url, job, task, codec, updates + 1, f"w{i}", batch), ready, stop, report))
            for i in range(workers)]
        for p in pool:
            p.start()
        for _ in pool:
            ready.get(timeout=120)
        runner = threading.Thread(target=node.run, name="coordinator", daemon=True)
        runner.start()
        publisher = ctx.Process(target=publish_updates, args=(
            PublisherJob(broker.url, job, task, codec, updates, opts.data_dir), report))
        publisher.start()
        finished = seen.done.wait(opts.timeout_s)
        publisher.join(120)
        rate, publisher_cpu = report.get(timeout=10)
        stop.set()
        workers_cpu = sum(report.get(timeout=60) for _ in pool)
        for p in pool:
            p.join(30)
        node.stop("ingest measured")
        runner.join(30)
        if not finished:
            raise RuntimeError(f"{len(seen.times)} of {updates} updates counted in time")
    span = seen.times[-1] - seen.times[0]
    (machine0, broker0, self0), (machine1, broker1, self1) = seen.cpu
    ours = (broker1 - broker0) + (self1 - self0) + publisher_cpu + workers_cpu
    return {"workers": workers, "updates": updates, "seconds": round(span, 4),
            "updates_per_s": round((updates - 1) / span, 1),
            "publisher_updates_per_s": round(rate, 1),
            "cpu_s": {"broker": round(broker1 - broker0, 2),
                      "coordinator_process": round(self1 - self0, 2),
                      "publisher": round(publisher_cpu, 2), "workers": round(workers_cpu, 2)},
            "foreign_cpu_s": round(max((machine1 - machine0) - ours, 0.0), 2)}


def run_workers(task: str, codec: str, updates: int, *, counts: tuple[int, ...], batch: int,
                opts: IngestOptions) -> dict[str, Any]:
    """The reference (the coordinator alone) and then each worker count, in one run."""
    rows = []
    for workers in (0, *counts):
        row = {"task": task, "codec": codec,
               **ingest_through(task, codec, updates, workers=workers, batch=batch, opts=opts)}
        rows.append(row)
        print(f"{task} {codec} workers={workers}: {row['updates_per_s']:.0f} updates/s "
              f"(publisher {row['publisher_updates_per_s']:.0f}/s, cpu {row['cpu_s']}, "
              f"foreign {row['foreign_cpu_s']} s)", flush=True)
    reference = rows[0]["updates_per_s"]
    for row in rows:
        row["ratio_to_coordinator"] = round(row["updates_per_s"] / reference, 3)
    return {"rows": rows, "machine_cores": multiprocessing.cpu_count()}
