"""The coordinator's decoders accept updates written by the JavaScript implementation.

web/test/protocol/cli/encode_updates.mjs encodes one update per codec vector in node;
each must equal, byte for byte, the update Python writes from the same inputs (zstd
aside: the JS writer stores raw blocks, so there the decoded delta must be equal), and a
JS-sealed update must open with the agent's key.
"""

from __future__ import annotations

import json
import subprocess

import msgpack
import numpy as np
import pytest

from protocol import Update, decode_delta, decode_update, encode_delta, encode_update
from protocol.cohort_hash import cohort_value
from protocol.keys import SigningKey
from protocol.signing import open_update
from tests.needs import require_node_modules
from tests.protocol.test_vectors import CODECS, load, weights


@pytest.fixture(scope="module")
def js_updates() -> dict[str, bytes]:
    web = require_node_modules()
    run = subprocess.run(
        ["node", "test/protocol/cli/encode_updates.mjs", "--print"],
        cwd=web,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return {k: bytes.fromhex(v) for k, v in json.loads(run.stdout).items()}


@pytest.mark.parametrize("vector", CODECS["cases"], ids=[c["codec"] for c in CODECS["cases"]])
def test_coordinator_accepts_js_update(js_updates, vector):
    delta = weights(vector["delta"])
    shapes = {n: a.shape for n, a in delta.items()}
    rng = np.random.default_rng(vector.get("seed", 7))
    python = encode_update(
        Update(
            job="demo",
            agent="web-1",
            round=3,
            model_id="e7e50b1c96ce0d9f4140c608f1c15fc7",
            samples=100,
            codec=vector["codec"],
            tensors=tuple(encode_delta(delta, vector["codec"], rng)),
            metrics={"loss": 0.5, "accuracy": 0.75},
            train_s=0.25,
        )
    )
    js = js_updates[vector["codec"]]
    if "zstd" not in vector["codec"]:
        assert js == python
    got, want = decode_update(js), decode_update(python)
    assert (got.agent, got.samples, got.metrics) == (want.agent, want.samples, want.metrics)
    ours = decode_delta(got.tensors, got.codec, shapes)
    theirs = decode_delta(want.tensors, want.codec, shapes)
    assert all(ours[n].tobytes() == theirs[n].tobytes() for n in shapes)


def test_coordinator_opens_js_signed_update(js_updates):
    key = SigningKey.from_seed(bytes.fromhex(load("signed.json")["seed"])).public
    body = open_update(
        js_updates["signed"],
        job="demo",
        run="r1",
        agent="web-1",
        keys={"web-1": key},
        max_body_bytes=1 << 20,
    )
    assert body == js_updates["int8"]
    assert msgpack.unpackb(body, raw=False)["codec"] == "int8"


def test_js_hashes_cohorts_as_python_does():
    """2,000 random (job, run, round, agent) tuples over the whole id alphabet and rounds up
    to 2^53: the JavaScript value of each equals Python's (docs/PROTOCOL.md §17)."""
    web = require_node_modules()
    rng = np.random.default_rng(16)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"

    def ident() -> str:
        rest = "".join(rng.choice(list(alphabet), size=int(rng.integers(0, 64))))
        return str(rng.choice(list(alphabet[:62]))) + rest

    tuples = [(ident(), ident(), int(rng.integers(1, 2**53, endpoint=True)), ident())
              for _ in range(2000)]
    run = subprocess.run(
        ["node", "test/protocol/cli/cohort_values.mjs", "--print"], cwd=web, check=False,
        input=json.dumps([[j, r, str(n), a] for j, r, n, a in tuples]),
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert [int(v) for v in json.loads(run.stdout)] == [cohort_value(*t) for t in tuples]
