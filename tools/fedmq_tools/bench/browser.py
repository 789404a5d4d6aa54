"""Browser training time per round next to the Python numpy trainer, in one invocation.

``python -m fedmq_tools.bench.browser --task mnist-2nn --shard 4/20 --rounds 5`` trains the
same shard (W1's agent 4: 500 rows) with W1's plan (1 epoch, batch 32, lr 0.05) for
``rounds`` rounds with ``edge_agent.numpy_trainer`` here, then in headless Chromium
with the browser agent's Worker (``browser_page/bench.js``, served beside the packaged
pages' ``train/`` modules), after one warm-up round each; prints one JSON line with
every round's seconds and the medians.
BENCHMARKS.md records the figures and this command.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from edge_agent.numpy_trainer import NumpyTrainer
from fedmq.tasks import DataConfig, agent_data, get_task
from fedmq.web.chromium import HeadlessChromium
from fedmq.web.links import page_url
from fedmq.web.server import STATIC_ROOT, WebConfig, WebServer
from fedmq.web.shard import ShardSource, parse_shard
from protocol import TrainPlan

PLAN = TrainPlan(epochs=1, batch_size=32, lr=0.05, seed=0)
PAGE = Path(__file__).resolve().parent / "browser_page"
TITLE = "fedmq-bench:"


def numpy_seconds(task: str, data: DataConfig, shard: tuple[int, int], rounds: int) -> list[float]:
    t = get_task(task)
    x, y = agent_data(t, data, *shard)
    trainer = NumpyTrainer(t.model, t.kind, x, y, shard[0])
    weights = trainer.initial_weights(0)
    seconds = []
    for round_no in range(rounds + 1):  # round 0 warms caches up, and is not kept
        started = time.perf_counter()
        weights = trainer.train(weights, PLAN, round_no + 1).weights
        if round_no:
            seconds.append(time.perf_counter() - started)
    return seconds


def browser_seconds(task: str, data: DataConfig, shard: tuple[int, int], rounds: int,
                    timeout_s: float) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="fedmq-bench-pages-"))
    try:
        shutil.copytree(STATIC_ROOT, root, dirs_exist_ok=True)
        for page in PAGE.iterdir():
            shutil.copyfile(page, root / "train" / page.name)
        config = WebConfig("ws://unused:1", "bench", task, ShardSource(task, data),
                           static_root=root)
        return _run_page(config, task, shard, rounds, timeout_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_page(config: WebConfig, task: str, shard: tuple[int, int], rounds: int,
              timeout_s: float) -> dict[str, object]:
    with WebServer(config, "127.0.0.1", 0) as server, HeadlessChromium() as chromium:
        url = page_url(f"http://127.0.0.1:{server.port}", "/train/bench.html",
                       {"task": task, "shard": f"{shard[0]}/{shard[1]}", "rounds": rounds})
        chromium.open(url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{chromium.endpoint}/json/list", timeout=10) as reply:
                titles = [html.unescape(t["title"]) for t in json.load(reply)]  # sent escaped
            done = [t for t in titles if t.startswith(TITLE)]
            if done:
                result: dict[str, object] = json.loads(done[0][len(TITLE):])
                if "error" in result:
                    raise RuntimeError(f"the browser benchmark failed: {result['error']}")
                return result
            time.sleep(0.2)  # a benchmark polling the page's title, not a test
    raise TimeoutError(f"the browser benchmark did not finish in {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedmq_tools.bench.browser", description=__doc__)
    p.add_argument("--task", default="mnist-2nn")
    p.add_argument("--shard", default="4/20", help="I/N (default W1's agent 4: 500 rows)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data", type=Path, help="MNIST directory")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    data, shard = DataConfig(data_dir=args.data), parse_shard(args.shard)
    load_before = os.getloadavg()[0]
    py = numpy_seconds(args.task, data, shard, args.rounds)
    js = browser_seconds(args.task, data, shard, args.rounds, args.timeout)
    js_seconds = [float(s) for s in js["seconds"]]  # type: ignore[attr-defined]
    print(json.dumps({
        "task": args.task, "shard": args.shard, "rows": js["rows"], "rounds": args.rounds,
        "numpy_s": [round(s, 4) for s in py], "browser_s": [round(s, 4) for s in js_seconds],
        "numpy_median_s": round(statistics.median(py), 4),
        "browser_median_s": round(statistics.median(js_seconds), 4),
        "browser_over_numpy": round(statistics.median(js_seconds) / statistics.median(py), 1),
        "browser": js["userAgent"],
        # other work on the machine distorts both figures: the 1-minute load, before and after
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
