"""Chunked transfer: payloads larger than a broker's cap travel as content-addressed pieces.

Brokers cap payloads (AWS IoT Core 128 KB, EMQX and NATS 1 MB by default). A
payload above ``max_payload`` is cut into chunk frames, each a msgpack map
carrying the SHA-256 of the whole payload, its index, the chunk count and the
total size, so frames are self-describing and may arrive out of order,
twice, or not at all. A retained model additionally leaves a small manifest on
its main topic (docs/PROTOCOL.md, "Chunked transfer").

:class:`Reassembler` is pure: it takes ``now`` and never reads a clock. Its
memory is bounded by ``max_buffered_bytes``: the oldest incomplete sets are
evicted first, and sets older than ``ttl_s`` expire.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgpack

from protocol.errors import RejectReason, WireError
from protocol.messages import SCHEMA_VERSION
from protocol.peek import peek_fields

#: msgpack framing around a chunk's data is well under this many bytes
FRAME_OVERHEAD = 160
#: the smallest cap fedmq will chunk for; below it the overhead dominates
MIN_MAX_PAYLOAD = 1024
MAX_CHUNKS = 65_536
#: completed sets remembered so that late duplicates of their chunks are ignored, and
#: rejected sets so that their late chunks are refused (and counted), not buffered anew
REMEMBER_COMPLETED = 256
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def is_chunk_frame(payload: bytes) -> bool:
    """Whether ``payload`` is a chunk frame or a manifest rather than a whole message.

    Cheap even for a large message (:func:`protocol.peek.peek_fields`).
    """
    try:
        return peek_fields(payload, ("type",)).get("type") in ("chunk", "chunked")
    except ValueError:  # not a msgpack map: certainly not a chunk frame
        return False


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a retained chunked payload consists of (left on the main topic)."""

    digest: str
    count: int
    size: int


@dataclass(frozen=True, slots=True)
class Chunk:
    digest: str
    index: int
    count: int
    size: int
    data: bytes


def split(payload: bytes, max_payload: int) -> tuple[Manifest, list[bytes]] | None:
    """Frames for ``payload`` if it exceeds ``max_payload``, else None (send it whole).

    Raises:
        ValueError: for a cap below :data:`MIN_MAX_PAYLOAD`.
    """
    if max_payload < MIN_MAX_PAYLOAD:
        raise ValueError(f"max_payload must be >= {MIN_MAX_PAYLOAD} bytes, got {max_payload}")
    if len(payload) <= max_payload:
        return None
    piece = max_payload - FRAME_OVERHEAD
    count = math.ceil(len(payload) / piece)
    if count > MAX_CHUNKS:
        raise ValueError(f"{len(payload)} bytes would need {count} chunks > {MAX_CHUNKS}")
    manifest = Manifest(_digest(payload), count, len(payload))
    frames = [
        _pack(
            {
                "v": SCHEMA_VERSION,
                "type": "chunk",
                "digest": manifest.digest,
                "index": i,
                "count": count,
                "size": manifest.size,
                "data": payload[i * piece : (i + 1) * piece],
            }
        )
        for i in range(count)
    ]
    return manifest, frames


def encode_manifest(m: Manifest) -> bytes:
    return _pack(
        {
            "v": SCHEMA_VERSION,
            "type": "chunked",
            "digest": m.digest,
            "count": m.count,
            "size": m.size,
        }
    )


def _pack(obj: dict[str, Any]) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def decode_frame(payload: bytes, max_size: int) -> Chunk | Manifest:
    """Parse a chunk frame or a manifest.

    Raises:
        WireError: MALFORMED for anything inconsistent, TOO_LARGE above ``max_size``.
    """
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(RejectReason.MALFORMED, f"chunk: not msgpack ({exc})") from None
    version = obj.get("v") if isinstance(obj, dict) else None
    if _count(version) != SCHEMA_VERSION:
        raise WireError(RejectReason.MALFORMED, "chunk: not a version 1 map")
    kind, digest = obj.get("type"), obj.get("digest")
    count, size = _count(obj.get("count")), _count(obj.get("size"))
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        raise WireError(RejectReason.MALFORMED, "chunk: digest must be 64 lowercase hex digits")
    if count is None or not 1 <= count <= MAX_CHUNKS:
        raise WireError(RejectReason.MALFORMED, f"chunk: count {obj.get('count')!r}")
    if size is None or size < count:
        raise WireError(RejectReason.MALFORMED, f"chunk: size {obj.get('size')!r}")
    if size > max_size:
        raise WireError(RejectReason.TOO_LARGE, f"chunked payload of {size} bytes > {max_size}")
    if kind == "chunked":
        return Manifest(digest, count, size)
    index, data = _count(obj.get("index")), obj.get("data")
    if kind != "chunk" or index is None or not index < count:
        raise WireError(RejectReason.MALFORMED, f"chunk: bad type or index {obj.get('index')!r}")
    if not isinstance(data, bytes) or not data or len(data) > size:
        raise WireError(RejectReason.MALFORMED, "chunk: data must be non-empty binary")
    return Chunk(digest, index, count, size, data)


def _count(v: object) -> int | None:
    """``v`` if it is a non-negative integer (and not a bool), else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


@dataclass(slots=True)
class _Set:
    count: int
    size: int
    first_seen: float
    parts: dict[int, bytes] = field(default_factory=dict)
    buffered: int = 0


class Reassembler:
    """Collects chunk frames per (source, digest) and yields each complete payload once."""

    def __init__(self, max_buffered_bytes: int, ttl_s: float, max_payload_size: int) -> None:
        self.max_buffered_bytes = max_buffered_bytes
        self.ttl_s = ttl_s
        self.max_payload_size = max_payload_size
        self._sets: OrderedDict[tuple[str, str], _Set] = OrderedDict()
        self._completed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._rejected: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._buffered = 0
        self.evicted = 0
        self.expired = 0

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def add(self, source: str, frame: bytes, now: float) -> bytes | None:
        """Take one frame from ``source`` (a topic or an agent); return a completed payload.

        Manifests are accepted and ignored here: the chunks carry all they describe.

        Raises:
            WireError: for a malformed, inconsistent or oversized frame, or a
                completed set whose bytes do not hash to its digest.
        """
        self.expire(now)
        parsed = decode_frame(frame, self.max_payload_size)
        if isinstance(parsed, Manifest):
            return None
        key = (source, parsed.digest)
        if key in self._completed:
            return None  # a late duplicate of a payload already delivered
        if key in self._rejected:
            raise WireError(RejectReason.MALFORMED, "a chunk of a set already rejected")
        entry = self._sets.get(key)
        if entry is None:
            entry = self._sets[key] = _Set(parsed.count, parsed.size, now)
        elif (entry.count, entry.size) != (parsed.count, parsed.size):
            raise WireError(RejectReason.MALFORMED, "chunk disagrees with its set's count/size")
        if parsed.index in entry.parts:
            return None  # a duplicate (QoS 1 redelivery, or a re-published retained chunk)
        if entry.buffered + len(parsed.data) > entry.size:
            self._reject(key)
            raise WireError(RejectReason.MALFORMED, "chunks exceed their declared size")
        entry.parts[parsed.index] = parsed.data
        entry.buffered += len(parsed.data)
        self._buffered += len(parsed.data)
        if len(entry.parts) < entry.count:
            self._evict_over_budget(keep=key)
            return None
        self._drop(key)
        payload = b"".join(entry.parts[i] for i in range(entry.count))
        if len(payload) != entry.size or _digest(payload) != parsed.digest:
            self._reject(key)
            raise WireError(RejectReason.MALFORMED, "reassembled bytes do not match the digest")
        _remember(self._completed, key)
        return payload

    def expire(self, now: float) -> None:
        """Drop incomplete sets older than ``ttl_s``."""
        for key in [k for k, s in self._sets.items() if now - s.first_seen > self.ttl_s]:
            self._drop(key)
            self.expired += 1

    def _evict_over_budget(self, keep: tuple[str, str]) -> None:
        for key in list(self._sets):
            if self._buffered <= self.max_buffered_bytes:
                return
            if key != keep:
                self._drop(key)
                self.evicted += 1
        if self._buffered > self.max_buffered_bytes:
            self._drop(keep)
            self.evicted += 1

    def _reject(self, key: tuple[str, str]) -> None:
        self._drop(key)
        _remember(self._rejected, key)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._sets.pop(key, None)
        if entry is not None:
            self._buffered -= entry.buffered


def _remember(keys: OrderedDict[tuple[str, str], None], key: tuple[str, str]) -> None:
    keys[key] = None
    if len(keys) > REMEMBER_COMPLETED:
        keys.popitem(last=False)
