"""Every decoder refuses bad input with the right RejectReason, and raises nothing else.

Each test starts from a valid document (conftest's samples), breaks one thing,
and checks ``WireError.reason``. The fuzz tests at the end mutate valid
encodings at random and accept only two outcomes: a valid message or WireError.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import RejectReason, Topics, WireError, check_id, decode_delta, parse_topic

MALFORMED = RejectReason.MALFORMED
NON_FINITE = RejectReason.NON_FINITE
KIND_NAMES = ["model", "update", "presence", "status", "metrics"]
NAN, INF = math.nan, math.inf


class Case:
    """One kind's valid document, and how to pack and decode variants of it."""

    def __init__(self, kind: Any, message: Any, shapes: dict[str, tuple[int, ...]]) -> None:
        self.kind = kind
        self.shapes = shapes  # the model's tensor shapes, for decode_delta
        self.payload: bytes = kind.encode(message)
        self._doc = msgpack.unpackb(self.payload) if kind.msgpack else json.loads(self.payload)

    def doc(self) -> dict[str, Any]:
        return copy.deepcopy(self._doc)

    def pack(self, doc: Any) -> bytes:
        if self.kind.msgpack:
            return msgpack.packb(doc, use_bin_type=True)
        return json.dumps(doc).encode()  # allow_nan: NaN and Infinity literals on purpose

    def decode(self, payload: bytes, **kw: Any) -> Any:
        return self.kind.decode(payload, **kw)

    def with_field(self, path: str, value: Any) -> bytes:
        doc = self.doc()
        parent, key = _walk(doc, path)
        parent[key] = value
        return self.pack(doc)

    def without_field(self, path: str) -> bytes:
        doc = self.doc()
        parent, key = _walk(doc, path)
        del parent[key]
        return self.pack(doc)


def _walk(doc: Any, path: str) -> tuple[Any, Any]:
    """``"plan.lr"`` -> (doc["plan"], "lr"); ``"tensors.0.shape"`` indexes lists."""
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, int(last) if isinstance(doc, list) else last


def rejects(decode: Callable[[bytes], Any], payload: bytes, reason: RejectReason) -> WireError:
    with pytest.raises(WireError) as info:
        decode(payload)
    assert info.value.reason is reason, info.value
    return info.value


@pytest.fixture(scope="session")
def cases(kinds, samples) -> dict[str, Case]:
    shapes = {n: a.shape for n, a in samples["model"].weights.items()}
    return {name: Case(kinds[name], samples[name], shapes) for name in KIND_NAMES}


# --- container: not msgpack / not JSON / not a map ----------------------------------------

NOT_A_MAP_MSGPACK = [b"", b"\xc1", b"\x92\x01\x02", b"\x01", b"\xc0", b"\xa5model", b"\x80"]
NOT_A_MAP_JSON = [b"", b"{", b"[]", b"1", b"null", b'"presence"', b"\xff\xfe", b"{}"]


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_reject_not_a_document(cases, kind):
    case = cases[kind]
    for payload in NOT_A_MAP_MSGPACK if case.kind.msgpack else NOT_A_MAP_JSON:
        expected = RejectReason.BAD_VERSION if payload in (b"\x80", b"{}") else MALFORMED
        rejects(case.decode, payload, expected)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_reject_trailing_garbage(cases, kind):
    rejects(cases[kind].decode, cases[kind].payload + b"\x00x", MALFORMED)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_reject_every_truncation(cases, kind):
    case = cases[kind]
    for n in range(len(case.payload)):
        rejects(case.decode, case.payload[:n], MALFORMED)


def test_reject_msgpack_oddities(cases):
    model = cases["model"]
    rejects(model.decode, b"\x81\xa1v\xa1\xff", MALFORMED)  # str that is not UTF-8
    rejects(model.decode, b"\x81\x01\x01", MALFORMED)  # integer map key
    rejects(model.decode, b"\x91" * 100_000 + b"\xc0", MALFORMED)  # nesting bomb
    rejects(model.decode, model.with_field("round", msgpack.ExtType(5, b"x")), MALFORMED)
    stamp = msgpack.Timestamp(1, 0)
    rejects(model.decode, model.with_field("issued_at", stamp), MALFORMED)


def test_reject_json_oddities(cases):
    status = cases["status"]
    rejects(status.decode, b"[" * 60_000, MALFORMED)  # nesting bomb, under 64 KiB
    rejects(status.decode, b"\xef\xbb\xbf" + status.payload, MALFORMED)  # UTF-8 BOM
    rejects(status.decode, status.payload.replace(b'"run.7"', b'"\xff"'), MALFORMED)
    rejects(status.decode, status.payload.replace(b'"at":2.0', b'"at":1' + b"0" * 400), MALFORMED)
    rejects(status.decode, status.payload.replace(b'"at":2.0', b'"at":1' + b"0" * 5000), MALFORMED)


# --- header: version and type ------------------------------------------------------------


@pytest.mark.parametrize("kind", KIND_NAMES)
@pytest.mark.parametrize("version", [0, 2, -1, "1", True, 1.0, [1], {"v": 1}])
def test_reject_wrong_version(cases, kind, version):
    rejects(cases[kind].decode, cases[kind].with_field("v", version), RejectReason.BAD_VERSION)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_reject_missing_version(cases, kind):
    rejects(cases[kind].decode, cases[kind].without_field("v"), RejectReason.BAD_VERSION)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_reject_wrong_type_field(cases, kind):
    case = cases[kind]
    for other in [*(k for k in KIND_NAMES if k != kind), "Model", "", 1, None]:
        rejects(case.decode, case.with_field("type", other), MALFORMED)
    rejects(case.decode, case.without_field("type"), MALFORMED)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_reject_another_kinds_payload(cases, kind):
    for other in KIND_NAMES:
        if other != kind:
            rejects(cases[kind].decode, cases[other].payload, MALFORMED)


# --- required and optional fields -----------------------------------------------------------

REQUIRED = {
    "model": [
        "job", "run", "round", "attempt", "model_id", "task", "plan", "plan.epochs",
        "plan.batch_size", "plan.lr", "plan.seed", "codec", "deadline_s", "done",
        "issued_at", "tensors", "tensors.0.name", "tensors.0.dtype", "tensors.0.shape",
        "tensors.0.data",
    ],
    "update": ["job", "agent", "round", "model_id", "samples", "codec", "train_s", "tensors"],
    "presence": ["agent", "state"],
    "status": [
        "job", "run", "phase", "round", "rounds", "attempt", "accepted", "quorum",
        "min_replies", "cohort_size", "agents_online", "at",
    ],
    "metrics": [
        "job", "run", "round", "closed_by", "accepted", "declined", "samples", "duration_s",
        "bytes_up", "bytes_down", "raw_bytes_up", "at",
    ],
}  # fmt: skip
#: may be absent; "nullable" ones may also be nil/null
OPTIONAL = {
    "model": ["cohort", "plan.options"],
    "update": ["metrics", "declined"],
    "presence": ["samples", "device", "trainer", "at"],
    "status": ["deadline_at", "rejected", "message"],
    "metrics": ["rejected", "accuracy", "loss", "train_loss", "train_accuracy"],
}
NULLABLE = {
    "model": ["cohort"],
    "update": ["declined"],
    "presence": ["samples", "device", "trainer", "at"],
    "status": ["deadline_at", "message"],
    "metrics": ["accuracy", "loss", "train_loss", "train_accuracy"],
}


def _pairs(table: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(kind, path) for kind, paths in table.items() for path in paths]


@pytest.mark.parametrize(("kind", "path"), _pairs(REQUIRED))
def test_reject_missing_field(cases, kind, path):
    case = cases[kind]
    rejects(case.decode, case.without_field(path), MALFORMED)
    rejects(case.decode, case.with_field(path, None), MALFORMED)


@pytest.mark.parametrize(("kind", "path"), _pairs(OPTIONAL))
def test_accept_missing_optional_field(cases, kind, path):
    case = cases[kind]
    assert isinstance(case.decode(case.without_field(path)), case.kind.cls)


@pytest.mark.parametrize(("kind", "path"), _pairs(NULLABLE))
def test_accept_null_optional_field(cases, kind, path):
    case = cases[kind]
    assert isinstance(case.decode(case.with_field(path, None)), case.kind.cls)


@pytest.mark.parametrize(
    ("kind", "path"), [("model", "plan.options"), ("update", "metrics"), ("status", "rejected")]
)
def test_reject_null_map(cases, kind, path):
    # Optional maps may be left out, but nil/null is not a map.
    rejects(cases[kind].decode, cases[kind].with_field(path, None), MALFORMED)


# --- wrong types, bool-where-int, ranges ----------------------------------------------------

LONG = "x" * 1025
WRONG = {
    "model": {
        "job": [5, b"job-a", ["job-a"]],
        "run": [1.5, True],
        "round": ["3", 3.0, True, 0, -1, 2**53 + 1],
        "attempt": [False, 1.5, -1, 1_000_001],
        "model_id": [5, "x" * 65, b"id"],
        "task": [["t"], "t" * 257, 0],
        "plan": [[1], "plan", 0],
        "plan.epochs": [True, 1.0, -1, 10_001],
        "plan.batch_size": [0, -1, False, 1 << 21],
        "plan.lr": ["0.1", True, -0.1, 1e7],
        "plan.seed": [-1, 2**32, True, 0.0],
        "plan.options": [[1], "mu", {"k": [1]}, {"k": None}, {"k": {}}, {"k": b"x"}],
        "codec": [5, ["none"], "c" * 257],
        "deadline_s": ["1", True, -1.0, 1e8],
        "cohort": ["agent-1", [5], ["a/b"], {"a": 1}, [None]],
        "done": [1, 0, "true", "false"],
        "issued_at": [True, -1.0, "now"],
        "tensors": [{}, "x", [], [5], [None], 0],
    },
    "update": {
        "job": [5, ""],
        "agent": [5, True, "a/b"],
        "round": [0, -1, True, "1", 1.0],
        "model_id": [5, "x" * 65],
        "samples": [True, -1, 0, 1.0, 2**40 + 1, "64"],
        "codec": [5, None, ["fp16"]],
        "metrics": [[1], {"loss": "x"}, {"loss": True}, {"loss": None}],
        "train_s": [-0.5, "1", True],
        "declined": [5, "x" * 257, True],
        "tensors": [{}, [5], [], "abc", [[]]],
    },
    "presence": {
        "agent": ["", 5, "a#"],
        "state": ["away", True, "ONLINE", 1],
        "samples": [-1, True, 1.5, 2**40 + 1, "64"],
        "device": [5, "x" * 65, ["esp32"]],
        "trainer": [["t"], 5, "x" * 65],
        "kind": [["python"], 5, True, "x" * 65],
        "at": ["now", True, -1],
    },
    "status": {
        "job": ["a/b", 5],
        "run": ["a b"],
        "phase": ["paused", 5, "TRAINING", "x" * 17],
        "round": [-1, True, 1.5],
        "rounds": [1.5, "10", -1],
        "accepted": [True, -1],
        "quorum": ["2", False],
        "min_replies": [-1, 1.0],
        "cohort_size": [True],
        "agents_online": [-2, "2"],
        "deadline_at": ["x", -1.0, True],
        "rejected": [[1], {"stale": -1}, {"stale": 1.5}, {"stale": True}, {"stale": "1"}],
        "at": ["x", -1.0, False],
        "message": [5, LONG, ["m"]],
    },
    "metrics": {
        "job": [""],
        "run": [5],
        "closed_by": ["timeout", 5, "QUORUM"],
        "round": [0, True, 1.5],
        "accepted": [True, -1],
        "declined": [-1, "1"],
        "samples": [1.5],
        "duration_s": [-1.0, "1", True],
        "bytes_up": [True, -1],
        "bytes_down": [-1, 2.0],
        "raw_bytes_up": ["36"],
        "accuracy": ["0.9", True, [0.9]],
        "loss": [False],
        "at": [-1, "1"],
        "rejected": [{"x": -1}, {"x": None}, "none"],
    },
}


@pytest.mark.parametrize(("kind", "path"), [(k, p) for k, fields in WRONG.items() for p in fields])
def test_reject_wrong_value(cases, kind, path):
    case = cases[kind]
    for value in WRONG[kind][path]:
        rejects(case.decode, case.with_field(path, value), MALFORMED)


def test_reject_too_many_map_items(cases):
    many = {f"k{i}": 1.0 for i in range(65)}
    rejects(cases["update"].decode, cases["update"].with_field("metrics", many), MALFORMED)
    rejects(cases["model"].decode, cases["model"].with_field("plan.options", many), MALFORMED)
    counts = {f"r{i}": 1 for i in range(65)}
    rejects(cases["status"].decode, cases["status"].with_field("rejected", counts), MALFORMED)
    rejects(cases["metrics"].decode, cases["metrics"].with_field("rejected", counts), MALFORMED)
    assert cases["update"].decode(
        cases["update"].with_field("metrics", dict(list(many.items())[:64]))
    )


def test_reject_oversize_cohort(cases):
    model = cases["model"]
    rejects(model.decode, model.with_field("cohort", ["a"] * 100_001), MALFORMED)
    assert len(model.decode(model.with_field("cohort", ["a"] * 1000)).cohort) == 1000


def test_update_needs_tensors_unless_declined(cases):
    update = cases["update"]
    rejects(update.decode, update.with_field("tensors", []), MALFORMED)
    doc = update.doc()
    doc.update(declined="no data", samples=0, tensors=[])
    decoded = update.decode(update.pack(doc))
    assert decoded.declined == "no data"
    assert decoded.samples == 0
    assert decoded.tensors == ()


# --- NaN and Inf ---------------------------------------------------------------------------

NON_FINITE_FIELDS = [
    ("model", "plan.lr", NAN),
    ("model", "plan.lr", INF),
    ("model", "deadline_s", NAN),
    ("model", "issued_at", INF),
    ("model", "issued_at", -INF),
    ("model", "plan.options", {"mu": NAN}),
    ("model", "plan.options", {"mu": -INF}),
    ("update", "train_s", NAN),
    ("update", "metrics", {"loss": INF}),
    ("update", "metrics", {"loss": NAN}),
    ("presence", "at", NAN),
    ("status", "at", INF),
    ("status", "deadline_at", NAN),
    ("metrics", "accuracy", NAN),
    ("metrics", "loss", -INF),
    ("metrics", "duration_s", INF),
    ("metrics", "at", NAN),
]


@pytest.mark.parametrize(("kind", "path", "value"), NON_FINITE_FIELDS)
def test_reject_non_finite_number(cases, kind, path, value):
    rejects(cases[kind].decode, cases[kind].with_field(path, value), NON_FINITE)


def _tensor(dtype: str, values: list[float], shape: list[int] | None = None) -> dict[str, Any]:
    data = np.array(values, dtype=dtype).tobytes()
    return {"name": "t", "dtype": dtype, "shape": shape or [len(values)], "data": data}


@pytest.mark.parametrize(
    "tensor",
    [
        _tensor("<f4", [1.0, NAN]),
        _tensor("<f4", [INF]),
        _tensor("<f2", [0.0, -INF]),
        _tensor("<f8", [NAN, 0.0]),
        _tensor("<f8", [1e300]),  # finite as float64, Inf once narrowed to float32
        _tensor("<f8", [-1e39]),
    ],
    ids=["f4-nan", "f4-inf", "f2-neginf", "f8-nan", "f8-overflow", "f8-negoverflow"],
)
def test_reject_non_finite_tensor(cases, tensor):
    model = cases["model"]
    rejects(model.decode, model.with_field("tensors", [tensor]), NON_FINITE)


def test_accept_wide_and_narrow_float_tensors(cases):
    model = cases["model"]
    for dtype in ("<f2", "<f4", "<f8"):
        tensor = _tensor(dtype, [0.5, -2.0, 0.0, 65504.0], [2, 2])
        weights = model.decode(model.with_field("tensors", [tensor])).weights
        assert weights["t"].dtype == np.float32
        np.testing.assert_array_equal(weights["t"], [[0.5, -2.0], [0.0, 65504.0]])


# --- tensor layout --------------------------------------------------------------------------

GOOD = _tensor("<f4", [1, 2, 3, 4, 5, 6], [2, 3])
BAD_TENSORS = {
    "data-short": {**GOOD, "data": GOOD["data"][:-1]},
    "data-long": {**GOOD, "data": GOOD["data"] + b"\x00"},
    "data-one-element-short": {**GOOD, "data": GOOD["data"][:-4]},
    "shape-count": {**GOOD, "shape": [3, 3]},
    "shape-negative": {**GOOD, "shape": [-2, -3]},
    "shape-string": {**GOOD, "shape": "23"},
    "shape-int": {**GOOD, "shape": 6},
    "shape-float-dim": {**GOOD, "shape": [2.0, 3]},
    "shape-bool-dim": {**GOOD, "shape": [True, 6]},
    "shape-9-dims": {**GOOD, "shape": [1] * 8 + [6]},
    "shape-map": {**GOOD, "shape": {"0": 6}},
    "shape-zero-huge": {**GOOD, "shape": [0, 2**64 - 1], "data": b""},
    "shape-int64-wrap": {**GOOD, "shape": [2**32, 2**32], "data": b""},
    "shape-too-big": {**GOOD, "shape": [0, *[2**40] * 7], "data": b""},
    "data-str": {**GOOD, "data": "\x00" * 24},
    "data-list": {**GOOD, "data": list(GOOD["data"])},
    "dtype-object": {**GOOD, "dtype": "|O"},
    "dtype-object-name": {**GOOD, "dtype": "object"},
    "dtype-big-endian": {**GOOD, "dtype": ">f4"},
    "dtype-native": {**GOOD, "dtype": "=f4"},
    "dtype-name": {**GOOD, "dtype": "float32"},
    "dtype-complex": {**GOOD, "dtype": "<c8", "shape": [3]},
    "dtype-bool": {**GOOD, "dtype": "|b1", "shape": [24]},
    "dtype-int": {**GOOD, "dtype": "<i4"},
    "dtype-uint8": {**GOOD, "dtype": "|u1", "shape": [24]},
    "dtype-not-str": {**GOOD, "dtype": 4},
    "name-empty": {**GOOD, "name": ""},
    "name-long": {**GOOD, "name": "n" * 257},
    "name-int": {**GOOD, "name": 5},
    "not-a-map": [GOOD["name"], GOOD["dtype"]],
}


@pytest.mark.parametrize("tensor", list(BAD_TENSORS.values()), ids=list(BAD_TENSORS))
def test_reject_bad_tensor(cases, tensor):
    model = cases["model"]
    rejects(model.decode, model.with_field("tensors", [tensor]), MALFORMED)


def test_accept_edge_tensors(cases):
    model = cases["model"]
    edges = [
        {**GOOD, "name": "n" * 256},
        _tensor("<f4", [7.0], []),  # a scalar: shape [], one element
        {**GOOD, "shape": [0, 5], "data": b""},  # an empty tensor
        {**GOOD, "shape": [1] * 7 + [6]},  # 8 dims is the limit
    ]
    for tensor in edges:
        assert model.decode(model.with_field("tensors", [tensor])).weights


def test_reject_duplicate_tensor_names(cases):
    model = cases["model"]
    doc = model.doc()
    doc["tensors"].append(copy.deepcopy(doc["tensors"][0]))
    err = rejects(model.decode, model.pack(doc), MALFORMED)
    assert "duplicate" in err.detail


def test_reject_too_many_tensors(cases):
    model, update = cases["model"], cases["update"]
    many = [{**_tensor("<f4", [0.0], []), "name": f"t{i}"} for i in range(4097)]
    rejects(model.decode, model.with_field("tensors", many), RejectReason.TOO_LARGE)
    assert len(model.decode(model.with_field("tensors", many[:4096])).weights) == 4096
    rejects(update.decode, update.with_field("tensors", many), MALFORMED)


# --- size limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["model", "update"])
def test_reject_over_max_bytes(cases, kind):
    case = cases[kind]
    size = len(case.payload)
    rejects(lambda p: case.decode(p, max_bytes=size - 1), case.payload, RejectReason.TOO_LARGE)
    assert isinstance(case.decode(case.payload, max_bytes=size), case.kind.cls)
    # The limit is checked before parsing: garbage over the limit is TOO_LARGE too.
    rejects(lambda p: case.decode(p, max_bytes=8), b"\xc1" * 9, RejectReason.TOO_LARGE)


@pytest.mark.parametrize("kind", ["presence", "status", "metrics"])
def test_reject_json_over_64_kib(cases, kind):
    case = cases[kind]
    doc = case.doc()
    doc["x_pad"] = ""
    pad = 64 * 1024 - len(case.pack(doc))
    doc["x_pad"] = "p" * pad
    exactly = case.pack(doc)
    assert len(exactly) == 64 * 1024
    assert isinstance(case.decode(exactly), case.kind.cls)
    doc["x_pad"] += "p"
    rejects(case.decode, case.pack(doc), RejectReason.TOO_LARGE)
    rejects(case.decode, b" " * (64 * 1024 + 1), RejectReason.TOO_LARGE)


# --- ids and topics -------------------------------------------------------------------------

BAD_IDS = [
    "", "a/b", "a+b", "a#", "+", "#", "a" * 65, "-a", "_a", ".a", "a b", "ä", "a\n",
    "a\x00", " a", "a$", "a\\b", "a:b",
]  # fmt: skip
GOOD_IDS = ["a", "A", "0", "a" * 64, "pi-01", "Job_2.v3", "9-._"]
ID_FIELDS = [
    ("model", "job"),
    ("model", "run"),
    ("model", "cohort.0"),
    ("update", "job"),
    ("update", "agent"),
    ("presence", "agent"),
    ("status", "job"),
    ("status", "run"),
    ("metrics", "job"),
    ("metrics", "run"),
]


def test_check_id():
    for bad in BAD_IDS:
        with pytest.raises(ValueError):
            check_id(bad)
        with pytest.raises(ValueError):
            Topics(bad)
        with pytest.raises(ValueError):
            Topics("demo").update(bad)
        with pytest.raises(ValueError):
            Topics("demo").presence(bad)
    for good in GOOD_IDS:
        assert check_id(good) == good
        assert Topics(good).update(good) == f"fedmq/v1/{good}/update/{good}"


@pytest.mark.parametrize(("kind", "path"), ID_FIELDS)
def test_reject_bad_id_field(cases, kind, path):
    case = cases[kind]
    for bad in BAD_IDS:
        rejects(case.decode, case.with_field(path, bad), MALFORMED)
    for good in GOOD_IDS:
        assert isinstance(case.decode(case.with_field(path, good)), case.kind.cls)


BAD_TOPICS = [
    "",
    "fedmq",
    "fedmq/v1",
    "fedmq/v1/demo",
    "fedmq/v2/demo/model",
    "other/v1/demo/model",
    "/fedmq/v1/demo/model",
    "fedmq/v1/demo/Model",
    "fedmq/v1/demo/unknown",
    "fedmq/v1/demo/model/extra",
    "fedmq/v1/demo/status/",
    "fedmq/v1/demo/update",
    "fedmq/v1/demo/update/",
    "fedmq/v1/demo/update/a/b",
    "fedmq/v1/demo/update/+",
    "fedmq/v1/demo/agents/#",
    "fedmq/v1/+/model",
    "fedmq/v1/#",
    "fedmq/v1//model",
    "fedmq/v1/de mo/model",
    "fedmq/v1/demo\n/model",
    "fedmq/v1/demo/agents/pi-01\n",
    "fedmq/v1/" + "j" * 65 + "/model",
]


@pytest.mark.parametrize("topic", BAD_TOPICS)
def test_reject_bad_topic(topic):
    rejects(parse_topic, topic, MALFORMED)


# --- fuzz: mutated encodings give a valid message or WireError, never anything else ---------

# About 4 s for all fuzz tests together; raise max_examples locally to dig deeper
# (3,000 per test found nothing more when this was written).
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_reject(case: Case, payload: bytes) -> None:
    """The decoder contract: a valid message (that re-encodes stably) or WireError."""
    try:
        message = case.decode(payload)
    except WireError as exc:
        assert isinstance(exc.reason, RejectReason)
        return
    assert isinstance(message, case.kind.cls)
    # Compare bytes, not messages: an update's tensor entries are opaque here (NaN != NaN).
    encoded = case.kind.encode(message)
    assert case.kind.encode(case.decode(encoded)) == encoded
    if case.kind.name == "update" and message.declined is None:
        _delta_or_reject(message, case.shapes)


def _delta_or_reject(update: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    try:
        delta = decode_delta(update.tensors, update.codec, shapes)
    except WireError:
        return
    assert {n: a.shape for n, a in delta.items()} == shapes
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in delta.values())


@st.composite
def byte_mutations(draw, payload: bytes) -> bytes:
    out = bytearray(payload)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and out:
            out[i] = draw(st.integers(0, 255))
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del out[i:]
        elif op == "splice":
            j = draw(st.integers(0, max(len(out) - 1, 0)))
            out[i:i] = out[j : j + draw(st.integers(1, 16))]
    return bytes(out)


@pytest.mark.parametrize("kind", KIND_NAMES)
@given(data=st.data())
@_FUZZ
def test_fuzz_mutated_bytes(cases, kind, data):
    case = cases[kind]
    _decode_or_reject(case, data.draw(byte_mutations(case.payload)))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a document, as tuples (generated keys may contain dots)."""
    out = []
    items = enumerate(doc) if isinstance(doc, list) else doc.items()
    for key, value in items:
        path = (*prefix, key)
        out.append(path)
        if isinstance(value, dict | list):
            out.extend(_paths(value, path))
    return out


@pytest.mark.parametrize("kind", KIND_NAMES)
@given(data=st.data())
@_FUZZ
def test_fuzz_mutated_fields(cases, kind, data):
    case = cases[kind]
    doc = case.doc()
    values = msgpack_values if case.kind.msgpack else json_values
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        *parents, key = data.draw(st.sampled_from(paths))
        parent = doc
        for part in parents:
            parent = parent[part]
        if data.draw(st.booleans()):
            parent[key] = data.draw(values)
        elif isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    _decode_or_reject(case, case.pack(doc))


@pytest.mark.parametrize("kind", KIND_NAMES)
@given(payload=st.binary(max_size=512))
def test_fuzz_random_bytes(cases, kind, payload):
    _decode_or_reject(cases[kind], payload)
