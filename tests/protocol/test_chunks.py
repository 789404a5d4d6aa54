"""Chunked transfer: split, then reassemble under shuffling, duplication, loss and tampering."""

from __future__ import annotations

import contextlib
import random
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    RejectReason,
    TopicKind,
    TopicRef,
    Topics,
    WireError,
    decode_model,
    encode_model,
    parse_topic,
)
from protocol.chunks import (
    FRAME_OVERHEAD,
    MIN_MAX_PAYLOAD,
    Manifest,
    Reassembler,
    decode_frame,
    encode_manifest,
    is_chunk_frame,
    split,
)


def reassembler(**kw: float) -> Reassembler:
    args = {"max_buffered_bytes": 10_000_000, "ttl_s": 60.0, "max_payload_size": 100_000_000}
    args.update(kw)
    return Reassembler(
        int(args["max_buffered_bytes"]), args["ttl_s"], int(args["max_payload_size"])
    )


def test_small_payload_travels_whole() -> None:
    assert split(b"x" * 2000, 2000) is None


def test_every_frame_fits_the_cap() -> None:
    payload = random.Random(0).randbytes(500_000)
    result = split(payload, 128 * 1024)
    assert result is not None
    manifest, frames = result
    assert manifest.count == len(frames) == 4
    assert all(len(f) <= 128 * 1024 for f in frames)
    assert all(is_chunk_frame(f) for f in frames)
    assert is_chunk_frame(encode_manifest(manifest))


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"data": b"x" * 300_000, "type": "chunk"}, True),  # found past a large value
        ({"data": b"x" * 300_000, "type": "update"}, False),
        ({"type": "chunked", "data": b"x" * 10}, True),
        ({"data": b"x" * 10}, False),
    ],
)
def test_chunk_frames_are_told_by_their_type_field(doc: dict[str, Any], expected: bool) -> None:
    assert is_chunk_frame(msgpack.packb(doc)) is expected


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"data": b"x" * 300_000})[:-10]],
)
def test_what_is_not_a_map_or_is_cut_short_is_not_a_chunk_frame(payload: bytes) -> None:
    assert is_chunk_frame(payload) is False


def test_a_cap_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="max_payload"):
        split(b"x" * 5000, MIN_MAX_PAYLOAD - 1)


@settings(max_examples=60, deadline=None)
@given(
    extra=st.integers(1, 60_000),
    cap=st.integers(MIN_MAX_PAYLOAD, 8_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_shuffled_and_duplicated_frames_reassemble_exactly_once(
    extra: int, cap: int, seed: int
) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(cap + extra)
    result = split(payload, cap)
    assert result is not None
    frames = result[1]
    delivery = frames + rng.sample(frames, k=min(3, len(frames)))
    rng.shuffle(delivery)
    r = reassembler()
    outputs = [out for f in delivery if (out := r.add("agent-1", f, 0.0)) is not None]
    assert outputs == [payload]
    assert r.buffered_bytes == 0


def test_a_lost_frame_never_yields_a_payload_and_the_set_expires() -> None:
    frames = split(bytes(range(256)) * 100, 4096)[1]  # type: ignore[index]
    r = reassembler(ttl_s=30.0)
    assert all(r.add("a", f, 0.0) is None for f in frames[1:])
    assert r.buffered_bytes > 0
    r.expire(31.0)
    assert r.buffered_bytes == 0 and r.expired == 1


def test_memory_stays_bounded_by_evicting_the_oldest_sets() -> None:
    r = reassembler(max_buffered_bytes=50_000)
    for source in range(20):  # twenty senders, each missing its last frame
        payload = random.Random(source).randbytes(20_000)
        for frame in split(payload, 4096)[1][:-1]:  # type: ignore[index]
            r.add(f"agent-{source}", frame, 0.0)
        assert r.buffered_bytes <= 50_000
    assert r.evicted > 0


def test_sources_do_not_mix() -> None:
    payload = random.Random(1).randbytes(10_000)
    frames = split(payload, 4096)[1]  # type: ignore[index]
    r = reassembler()
    assert r.add("a", frames[0], 0.0) is None
    assert r.add("b", frames[1], 0.0) is None
    assert r.add("a", frames[2], 0.0) is None
    assert r.add("b", frames[0], 0.0) is None
    assert r.add("a", frames[1], 0.0) == payload


def _tamper(frame: bytes, **changes: object) -> bytes:
    obj = msgpack.unpackb(frame, raw=False)
    obj.update(changes)
    return msgpack.packb(obj, use_bin_type=True)


def test_altered_data_fails_the_digest() -> None:
    frames = split(b"a" * 10_000, 4096)[1]  # type: ignore[index]
    frames[1] = _tamper(frames[1], data=b"b" * len(msgpack.unpackb(frames[1])["data"]))
    r = reassembler()
    with pytest.raises(WireError) as info:
        for f in frames:
            r.add("a", f, 0.0)
    assert info.value.reason is RejectReason.MALFORMED
    assert "digest" in info.value.detail
    assert r.buffered_bytes == 0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"index": 99}, RejectReason.MALFORMED),
        ({"index": -1}, RejectReason.MALFORMED),
        ({"count": 0}, RejectReason.MALFORMED),
        ({"count": True}, RejectReason.MALFORMED),
        ({"digest": "abc"}, RejectReason.MALFORMED),
        ({"digest": "A" * 64}, RejectReason.MALFORMED),  # SHA-256 in lowercase hex only
        ({"digest": "z" * 64}, RejectReason.MALFORMED),
        ({"digest": "a" * 63 + "\n"}, RejectReason.MALFORMED),
        ({"data": "not bytes"}, RejectReason.MALFORMED),
        ({"size": 1}, RejectReason.MALFORMED),
        ({"size": 10**12}, RejectReason.TOO_LARGE),
        ({"v": 2}, RejectReason.MALFORMED),
        ({"type": "model"}, RejectReason.MALFORMED),
    ],
)
def test_malformed_frames_are_rejected_with_a_reason(
    changes: dict[str, object], reason: RejectReason
) -> None:
    frame = split(b"z" * 10_000, 4096)[1][0]  # type: ignore[index]
    with pytest.raises(WireError) as info:
        reassembler().add("a", _tamper(frame, **changes), 0.0)
    assert info.value.reason is reason


def test_a_frame_disagreeing_with_its_set_is_rejected() -> None:
    frames = split(b"q" * 10_000, 4096)[1]  # type: ignore[index]
    r = reassembler()
    r.add("a", frames[0], 0.0)
    with pytest.raises(WireError, match="disagrees"):
        r.add("a", _tamper(frames[1], size=9_999), 0.0)


@pytest.mark.parametrize("late", ["the same frame again", "a disagreeing frame"])
def test_frames_of_a_set_just_rejected_are_rejected_too(late: str) -> None:
    """A set that failed its digest is gone; what arrives for it later is refused and so
    counted, never buffered in silence as the start of a new set."""
    frames = split(b"a" * 10_000, 4096)[1]  # type: ignore[index]
    tampered = [frames[0], _tamper(frames[1], data=b"b" * len(msgpack.unpackb(frames[1])["data"])),
                frames[2]]
    r = reassembler()
    with pytest.raises(WireError, match="digest"):
        for f in tampered:
            r.add("a", f, 0.0)
    again = frames[0] if late == "the same frame again" else _tamper(frames[0], size=20_000)
    with pytest.raises(WireError) as info:
        r.add("a", again, 1.0)
    assert info.value.reason is RejectReason.MALFORMED and "rejected" in info.value.detail
    assert r.buffered_bytes == 0
    assert r.add("b", frames[0], 1.0) is None  # another source's set is its own


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_reassembler(junk: bytes) -> None:
    r = reassembler()
    with contextlib.suppress(WireError):
        assert r.add("a", junk, 0.0) is None
    assert r.buffered_bytes <= len(junk)


def test_manifest_round_trip() -> None:
    m = Manifest("0" * 64, 3, 5000)
    assert decode_frame(encode_manifest(m), 10_000) == m


def test_chunk_topics_parse_to_their_index() -> None:
    topics = Topics("job-1")
    assert parse_topic(topics.model_chunk(17)) == TopicRef("job-1", TopicKind.MODEL, chunk=17)
    for bad in ("fedmq/v1/job-1/model/chunk/x", "fedmq/v1/job-1/model/chunk/1234567",
                "fedmq/v1/job-1/model/piece/1"):
        with pytest.raises(WireError):
            parse_topic(bad)


def test_a_model_announcing_a_tiny_payload_cap_is_refused(samples: dict[str, Any]) -> None:
    obj = msgpack.unpackb(encode_model(samples["model"]), raw=False)
    obj["max_payload"] = 100
    with pytest.raises(WireError) as info:
        decode_model(msgpack.packb(obj, use_bin_type=True))
    assert info.value.reason is RejectReason.MALFORMED


def _first_frames(count: int, seed: int) -> list[bytes]:
    """The first frame of ``count`` distinct two-chunk payloads (each set stays incomplete)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = split(rng.randbytes(MIN_MAX_PAYLOAD + 16), MIN_MAX_PAYLOAD)
        assert parts is not None
        out.append(parts[1][0])
    return out


class _CountingSets(OrderedDict[tuple[str, str], Any]):
    """The reassembler's incomplete sets, counting how many of them it looks at."""

    looked = 0

    def items(self) -> Iterator[tuple[tuple[str, str], Any]]:  # type: ignore[override]
        for item in super().items():
            self.looked += 1
            yield item


def test_a_frame_looks_at_no_more_sets_however_many_are_in_flight() -> None:
    # 20,000 agents' chunked updates under way: expiry and eviction used to scan every
    # incomplete set on every frame, O(sets) per frame and O(sets^2) per round. Counted, not
    # timed: expiry looks at the oldest set and stops there while it is young.
    r = reassembler(max_buffered_bytes=10**12)
    r._sets = sets = _CountingSets()  # white box: what one frame looks at
    for i, frame in enumerate(_first_frames(20_000, seed=2)):
        r.add(f"busy-{i}", frame, 0.0)
    sets.looked = 0
    for i, frame in enumerate(_first_frames(1000, seed=1)):
        assert r.add(f"agent-{i}", frame, 1.0) is None
    assert len(sets) == 21_000
    assert sets.looked <= 1000  # one set a frame, not 20,000


def test_expiry_and_eviction_still_take_the_oldest_sets_first() -> None:
    frames = _first_frames(6, seed=4)
    piece = MIN_MAX_PAYLOAD - FRAME_OVERHEAD  # each first frame buffers this many bytes
    r = reassembler(ttl_s=10.0)
    for i, frame in enumerate(frames[:3]):
        r.add(f"a{i}", frame, float(i))  # began at 0, 1, 2
    r.expire(11.5)  # a0 and a1 are older than 10 s; a2 is not
    assert (r.expired, r.buffered_bytes) == (2, piece)
    small = reassembler(max_buffered_bytes=2 * piece)
    small.add("b0", frames[3], 0.0)
    small.add("b1", frames[4], 1.0)
    small.add("b2", frames[5], 2.0)  # over budget: b0, the oldest, goes
    assert (small.evicted, small.buffered_bytes) == (1, 2 * piece)
    rest = split(b"x" * (MIN_MAX_PAYLOAD + 16), MIN_MAX_PAYLOAD)
    assert rest is not None
    small.add("b3", rest[1][0], 3.0)  # b1 goes next, never the set just added to
    assert small.add("b3", rest[1][1], 3.0) == b"x" * (MIN_MAX_PAYLOAD + 16)
