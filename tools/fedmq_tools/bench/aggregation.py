"""``python -m fedmq_tools.bench.aggregation``: what each aggregator costs per round.

For a task's model shapes and ``--updates`` random deltas, each aggregator is
timed adding them one by one and producing the round's result (best of
``--repeat``), and its memory is measured with tracemalloc: what it holds after
the adds, and the peak during ``result()``. The deltas are made before timing
starts. ``--clip-norm`` wraps every aggregator in server-side clipping.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from coordinator import make_aggregator
from protocol import Weights

DEFAULT_SPECS = ("fedavg", "median", "trimmed:0.2", "krum:4", "multikrum:4:12")


def model_shapes(task: str) -> dict[str, tuple[int, ...]]:
    from edge_agent.torch_trainer import initial_weights
    from fedmq.tasks import get_task

    return {n: a.shape for n, a in initial_weights(get_task(task).model, 0).items()}


def measure(spec: str, deltas: list[Weights], repeat: int,
            clip_norm: float | None = None) -> dict[str, Any]:
    """Seconds per add and per result (best of ``repeat``), and bytes held and at peak."""
    shapes = {n: a.shape for n, a in deltas[0].items()}
    add_s, result_s = [], []
    for _ in range(repeat):
        aggregator = make_aggregator(spec, shapes, clip_norm=clip_norm)
        began = time.perf_counter()
        for delta in deltas:
            aggregator.add(delta, 500)
        added = time.perf_counter()
        aggregator.result()
        add_s.append((added - began) / len(deltas))
        result_s.append(time.perf_counter() - added)
    tracemalloc.start()
    try:
        aggregator = make_aggregator(spec, shapes, clip_norm=clip_norm)
        for delta in deltas:
            aggregator.add(delta, 500)
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        aggregator.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"aggregator": spec, "add_ms": round(1e3 * min(add_s), 3),
            "result_ms": round(1e3 * min(result_s), 2), "held_bytes": held, "peak_bytes": peak}


def report(doc: dict[str, Any]) -> str:
    model = doc["model_bytes"]
    lines = [f"{doc['task']}: {doc['parameters']:,} parameters ({model / 1e6:.2f} MB float32), "
             f"{doc['updates']} updates",
             "",
             "| aggregator | add ms/update | result ms | held (x model) | peak in result "
             "(x model) |",
             "| --- | --- | --- | --- | --- |"]
    for r in doc["results"]:
        lines.append(f"| {r['aggregator']} | {r['add_ms']:.3f} | {r['result_ms']:.1f} | "
                     f"{r['held_bytes'] / model:.1f} | {r['peak_bytes'] / model:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from fedmq_tools.bench.results import RESULTS_DIR, begin, write_results

    parser = argparse.ArgumentParser(
        prog="python -m fedmq_tools.bench.aggregation", description=__doc__
    )
    parser.add_argument("--task", default="mnist-2nn")
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--aggregator", action="append",
                        help=f"repeatable (default: {', '.join(DEFAULT_SPECS)})")
    parser.add_argument("--clip-norm", type=float)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "aggregation.json")
    args = parser.parse_args(argv)
    # as typed: results.command_line() would name the fedmq console script
    command = shlex.join(["python", "-m", "fedmq_tools.bench.aggregation",
                          *(sys.argv[1:] if argv is None else argv)])
    shapes = model_shapes(args.task)
    rng = np.random.default_rng(0)
    deltas = [{n: rng.normal(0, 0.01, s).astype(np.float32) for n, s in shapes.items()}
              for _ in range(args.updates)]
    begun = begin()
    parameters = sum(int(np.prod(s)) for s in shapes.values())
    doc = {"task": args.task, "parameters": parameters, "model_bytes": 4 * parameters,
           "updates": args.updates, "clip_norm": args.clip_norm,
           "results": [measure(spec, deltas, args.repeat, args.clip_norm)
                       for spec in args.aggregator or DEFAULT_SPECS]}
    print(report(doc))
    print(f"results: {write_results(args.out, 'aggregation', begun, {**doc, 'command': command})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
