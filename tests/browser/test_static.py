"""``fedmq web``'s server and the static copy it serves (no browser needed).

The pages are ES modules under web/src copied, with the vendored libraries from
web/node_modules, into fedmq/web/static (``python -m fedmq.web.assets``); the copy
must equal its sources, or pip users would get other pages than the tests exercise.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fedmq.tasks import DataConfig, agent_data, get_task
from fedmq.web.assets import planned
from fedmq.web.links import page_url
from fedmq.web.server import STATIC_ROOT, WebConfig, WebServer
from fedmq.web.shard import ShardSource
from tests.needs import require_node_modules


def test_the_static_copy_equals_its_sources() -> None:
    plan = list(planned(require_node_modules()))
    stale = [target for source, target in plan
             if not (STATIC_ROOT / target).is_file()
             or (STATIC_ROOT / target).read_bytes() != source.read_bytes()]
    extra = sorted({p.relative_to(STATIC_ROOT).as_posix() for p in STATIC_ROOT.rglob("*")
                    if p.is_file()} - {target for _, target in plan})
    assert stale == [] and extra == [], "run: python -m fedmq.web.assets, and commit the result"
    assert {"agent/index.html", "dashboard/index.html", "vendor/mqtt/mqtt.esm.js",
            "vendor/msgpack/index.mjs", "vendor/uplot/uPlot.esm.js"} <= {t for _, t in plan}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    module = tmp_path / "my_task.js"
    module.write_text("export default {};\n")
    config = WebConfig("ws://broker.local:9001", "demo", "digits",
                       ShardSource("digits", DataConfig()), {"my_task": module})
    with WebServer(config, "127.0.0.1", 0) as web:
        yield f"http://127.0.0.1:{web.port}"


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, "", b""


def test_the_pages_and_their_modules_are_served(server: str) -> None:
    status, kind, body = get(f"{server}/")
    assert status == 200 and kind.startswith("text/html") and b'"uplot"' in body
    status, _, body = get(f"{server}/agent")
    assert status == 200 and b"/agent/page.js" in body
    status, kind, _ = get(f"{server}/vendor/msgpack/index.mjs")
    assert status == 200 and kind.startswith("text/javascript")
    assert get(f"{server}/tasks/my_task.js")[2] == b"export default {};\n"


def test_config_names_the_broker_and_job_but_no_secret(server: str) -> None:
    status, _, body = get(f"{server}/config.json")
    assert status == 200
    assert json.loads(body) == {"broker": "ws://broker.local:9001", "job": "demo",
                                "task": "digits", "shards": True, "tasks": ["/tasks/my_task.js"]}


def test_a_demo_shard_holds_the_rows_a_python_agent_trains_on(server: str) -> None:
    status, _, body = get(f"{server}/data/shard?shard=3/10")
    doc = msgpack.unpackb(body)
    x, y = agent_data(get_task("digits"), DataConfig(), 3, 10)
    assert status == 200 and (doc["v"], doc["type"], doc["rows"], doc["features"]) == (
        1, "shard", len(x), 64)
    assert np.array_equal(np.frombuffer(doc["x"], "<f4").reshape(x.shape), x)
    assert np.array_equal(np.frombuffer(doc["y"], "<i4"), y)


@pytest.mark.parametrize("path", ["/../pyproject.toml", "/%2e%2e/server.py", "/agent/",
                                  "/tasks/other.js", "/nothing.js"])
def test_nothing_outside_the_static_files_is_served(server: str, path: str) -> None:
    assert get(f"{server}{path}")[0] == 404


@pytest.mark.parametrize("query", ["", "?shard=10/10", "?shard=a/b", "?shard=1/0"])
def test_a_bad_shard_request_is_refused(server: str, query: str) -> None:
    assert get(f"{server}/data/shard{query}")[0] == 400


def test_links_carry_settings_in_the_fragment() -> None:
    url = page_url("http://h:8080/", "/agent", {"broker": "ws://h:9001", "job": "j",
                                                "pass": "a&b#c", "agent": None})
    assert url == "http://h:8080/agent#broker=ws%3A%2F%2Fh%3A9001&job=j&pass=a%26b%23c"


def test_fedmq_web_prints_links_with_the_credentials_in_the_fragment() -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "fedmq", "web", "--broker", "ws://web:s3cret@127.0.0.1:9001",
         "--job", "demo", "--task", "digits", "--shards", "10", "--listen", "127.0.0.1:0",
         "--public-url", "http://phone-can-reach:8080"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    assert lines[0].startswith("fedmq web: serving http://phone-can-reach:8080 for job demo")
    assert lines[1].split() == ["dashboard", "http://phone-can-reach:8080/#broker=ws%3A%2F%2F127.0.0.1%3A9001&job=demo&user=web&pass=s3cret"]
    assert lines[2].split()[1].endswith("&pass=s3cret&shard=any%2F10")
    assert code == 0
