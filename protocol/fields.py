"""The checked reading and writing every decoder in :mod:`protocol` shares.

:class:`Fields` reads one message's map field by field, each read checking type,
range and finiteness and raising :class:`~protocol.errors.WireError` naming the
message and the field; :func:`unpack`/:func:`json_load` bound sizes before
parsing. Unknown extra fields are ignored, so a newer peer can add optional
fields without breaking an older one (docs/PROTOCOL.md, "Versioning").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import msgpack

from protocol.errors import RejectReason, WireError
from protocol.messages import (
    SCHEMA_VERSION,
    Scalar,
)
from protocol.topics import check_id

#: Refuse to parse payloads above this size unless the caller says otherwise.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024
MAX_MAP_ITEMS = 64
MAX_COHORT = 100_000
#: agents one announcement's roll call may name
MAX_ROLL_CALL = 256
MAX_TENSORS = 4096


class Fields:
    """Typed, validating access to one decoded map."""

    def __init__(self, obj: Any, what: str) -> None:
        if not isinstance(obj, Mapping):
            raise WireError(RejectReason.MALFORMED, f"{what}: expected a map")
        self.obj, self.what = obj, what

    def _fail(self, key: str, expected: str) -> WireError:
        got = type(self.obj.get(key)).__name__
        detail = f"{self.what}.{key}: expected {expected}, got {got}"
        return WireError(RejectReason.MALFORMED, detail)

    def present(self, key: str) -> bool:
        return self.obj.get(key) is not None

    def integer(self, key: str, lo: int = 0, hi: int = 2**53) -> int:
        v = self.obj.get(key)
        if not isinstance(v, int) or isinstance(v, bool):
            raise self._fail(key, "an integer")
        if not lo <= v <= hi:
            raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}={v} outside [{lo}, {hi}]")
        return v

    def number(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        v = self.obj.get(key)
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise self._fail(key, "a number")
        try:
            finite = math.isfinite(v)
        except OverflowError:  # a JSON integer beyond float range
            raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}: out of range") from None
        if not finite:
            raise WireError(RejectReason.NON_FINITE, f"{self.what}.{key} is not finite")
        if not lo <= v <= hi:
            raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}={v} outside [{lo}, {hi}]")
        return float(v)

    def text(self, key: str, max_len: int = 256) -> str:
        v = self.obj.get(key)
        if not isinstance(v, str) or len(v) > max_len:
            raise self._fail(key, f"a string of <= {max_len} chars")
        return v

    def flag(self, key: str) -> bool:
        v = self.obj.get(key)
        if not isinstance(v, bool):
            raise self._fail(key, "a boolean")
        return v

    def ident(self, key: str) -> str:
        try:
            return check_id(self.text(key, 64), key)
        except ValueError as exc:
            raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}: {exc}") from None

    def ident_list(self, key: str, limit: int = MAX_COHORT) -> list[str]:
        v = self.obj.get(key)
        if not isinstance(v, list) or len(v) > limit:
            raise self._fail(key, f"a list of <= {limit} ids")
        return [Fields({"a": a}, f"{self.what}.{key}").ident("a") for a in v]

    def mapping(self, key: str) -> Mapping[Any, Any]:
        v = self.obj.get(key, {})
        if not isinstance(v, Mapping) or len(v) > MAX_MAP_ITEMS:
            raise self._fail(key, f"a map of <= {MAX_MAP_ITEMS} items")
        return v

    def scalars(self, key: str) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {}
        for k, v in self.mapping(key).items():
            if not isinstance(k, str) or not isinstance(v, int | float | str | bool):
                raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}: bad entry {k!r}")
            if isinstance(v, float) and not math.isfinite(v):
                raise WireError(RejectReason.NON_FINITE, f"{self.what}.{key}.{k} is not finite")
            out[k] = v
        return out

    def floats(self, key: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, v in self.scalars(key).items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}.{k}: not a number")
            out[k] = float(v)
        return out

    def counts(self, key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for k, v in self.scalars(key).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise WireError(RejectReason.MALFORMED, f"{self.what}.{key}.{k}: not a count")
            out[k] = v
        return out


def header(obj: Any, kind: str) -> Fields:
    f = Fields(obj, kind)
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != SCHEMA_VERSION:
        raise WireError(RejectReason.BAD_VERSION, f"{kind}: schema version {version!r}, want 1")
    if obj.get("type") != kind:
        raise WireError(RejectReason.MALFORMED, f"expected type {kind!r}, got {obj.get('type')!r}")
    return f


def unpack(payload: bytes, max_bytes: int, kind: str) -> Any:
    if len(payload) > max_bytes:
        raise WireError(RejectReason.TOO_LARGE, f"{kind}: {len(payload)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(RejectReason.MALFORMED, f"{kind}: not msgpack ({exc})") from None


def pack(obj: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def json_load(payload: bytes, kind: str) -> Any:
    if len(payload) > MAX_JSON_BYTES:
        raise WireError(RejectReason.TOO_LARGE, f"{kind}: {len(payload)} bytes")
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(RejectReason.MALFORMED, f"{kind}: not JSON ({exc})") from None


def json_dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


