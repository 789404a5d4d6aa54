"""SecAgg messages: round trips, and every malformed input refused with its reason."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import RejectReason, TopicKind, TopicRef, Topics, WireError, parse_topic
from protocol.secagg import (
    KeysAdvert,
    MaskedInput,
    Participant,
    Relay,
    Revealed,
    Roster,
    Sealed,
    SecAggConfig,
    Session,
    SharesOut,
    Survivors,
    UnmaskShares,
    decode_config,
    decode_down,
    decode_up,
    encode_config,
    encode_down,
    encode_up,
)
from protocol.secagg.fixedpoint import RingSpec
from protocol.secagg.shamir import PRIME
from protocol.secagg.wire import decode_share_pair, encode_share_pair

S = Session("demo", "r1", 3, 1)
K = [bytes([i]) * 32 for i in range(1, 9)]
PEOPLE = (Participant("a", K[0], K[1]), Participant("b", K[2], K[3]), Participant("c", K[4], K[5]))
UP = [
    KeysAdvert(S, "a", K[0], K[1]),
    SharesOut(S, "a", b"\x07" * 32, (Sealed("b", b"x" * 87), Sealed("c", b"y" * 87))),
    MaskedInput(S, "a", bytes(range(16))),
    UnmaskShares(S, "a", (Revealed("a", 5), Revealed("b", PRIME - 1)), (Revealed("c", 0),)),
]
DOWN = [
    Roster(S, PEOPLE, 2, 2, b"\x09" * 16, 10.0),
    Relay(S, "b", (Sealed("a", b"z" * 87),), 25.5),
    Survivors(S, ("a", "b"), 10.0),
]


@pytest.mark.parametrize("message", UP, ids=lambda m: type(m).__name__)
def test_up_messages_round_trip(message):
    assert decode_up(encode_up(message)) == message


@pytest.mark.parametrize("message", DOWN, ids=lambda m: type(m).__name__)
def test_down_messages_round_trip(message):
    assert decode_down(encode_down(message)) == message


def test_config_round_trips_and_refuses_overflowing_bounds():
    config = SecAggConfig(RingSpec(32, 11, 4.0, 500, 200), 10.0)
    assert decode_config(encode_config(config)) == config
    doc = encode_config(config) | {"frac_bits": 20}
    with pytest.raises(WireError, match="overflow") as exc:
        decode_config(doc)
    assert exc.value.reason is RejectReason.MALFORMED
    with pytest.raises(WireError):
        decode_config(encode_config(config) | {"ring_bits": 16})


@settings(max_examples=50, deadline=None)
@given(
    ids=st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), min_size=2, max_size=6,
                 unique=True),
    shares=st.lists(st.integers(0, PRIME - 1), min_size=6, max_size=6),
    data=st.binary(max_size=64).map(lambda b: b[: len(b) // 4 * 4]),
)
def test_round_trip_property(ids, shares, data):
    ids = sorted(ids)
    seeds = tuple(Revealed(a, s) for a, s in zip(ids[:3], shares, strict=False))
    keys = tuple(Revealed(a, s) for a, s in zip(ids[3:], shares[3:], strict=False))
    for m in (UnmaskShares(S, ids[0], seeds, keys), MaskedInput(S, ids[0], data)):
        assert decode_up(encode_up(m)) == m
    assert decode_down(encode_down(Survivors(S, tuple(ids), 1.0))).survivors == tuple(ids)


def raw(message: Any) -> dict[str, Any]:
    encode = encode_up if isinstance(message, KeysAdvert | SharesOut | MaskedInput |
                                     UnmaskShares) else encode_down
    doc: dict[str, Any] = msgpack.unpackb(encode(message), raw=False)
    return doc


def refused(doc: dict[str, Any], reason: RejectReason, down: bool = False) -> WireError:
    decode = decode_down if down else decode_up
    with pytest.raises(WireError) as exc:
        decode(msgpack.packb(doc, use_bin_type=True))
    assert exc.value.reason is reason, exc.value
    return exc.value


KEYS = raw(UP[0])
SHARES = raw(UP[1])
UNMASK = raw(UP[3])
ROSTER = raw(DOWN[0])


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (KEYS | {"v": 2}, RejectReason.BAD_VERSION),
        (KEYS | {"v": True}, RejectReason.BAD_VERSION),
        (KEYS | {"type": "secagg_nope"}, RejectReason.MALFORMED),
        (KEYS | {"type": "secagg_roster"}, RejectReason.MALFORMED),  # a down message sent up
        (KEYS | {"round": 0}, RejectReason.MALFORMED),
        (KEYS | {"attempt": -1}, RejectReason.MALFORMED),
        (KEYS | {"agent": "a/b"}, RejectReason.MALFORMED),
        (KEYS | {"enc_pk": b"\x01" * 31}, RejectReason.BAD_KEY),
        (KEYS | {"mask_pk": "text"}, RejectReason.MALFORMED),
        (KEYS | {"mask_pk": KEYS["enc_pk"]}, RejectReason.BAD_KEY),
        (SHARES | {"commitment": b"c" * 31}, RejectReason.MALFORMED),
        (SHARES | {"shares": [{"to": "c", "ct": b"1"}, {"to": "b", "ct": b"2"}]},
         RejectReason.MALFORMED),  # not sorted
        (SHARES | {"shares": [{"to": "b", "ct": b"1"}, {"to": "b", "ct": b"2"}]},
         RejectReason.MALFORMED),  # a repeated recipient
        (SHARES | {"shares": [{"to": "a", "ct": b"1"}]}, RejectReason.MALFORMED),  # to itself
        (SHARES | {"shares": [{"to": "b", "ct": b"1" * 257}]}, RejectReason.BAD_SHARE),
        (SHARES | {"shares": [{"to": "b"}]}, RejectReason.MALFORMED),
        (raw(UP[2]) | {"data": b"123"}, RejectReason.MALFORMED),
        (UNMASK | {"seed_shares": [{"of": "a", "share": b"\xff" * 33}]}, RejectReason.BAD_SHARE),
        (UNMASK | {"seed_shares": [{"of": "a", "share": b"\x00" * 32}]}, RejectReason.BAD_SHARE),
        (UNMASK | {"key_shares": [{"of": "a", "share": b"\x00" * 33}]}, RejectReason.BAD_SHARE),
    ],
)
def test_bad_up_messages_are_refused_with_their_reason(doc, reason):
    refused(doc, reason)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (ROSTER | {"participants": ROSTER["participants"][:1], "degree": 0, "threshold": 2},
         RejectReason.MALFORMED),
        (ROSTER | {"participants": ROSTER["participants"][::-1]}, RejectReason.MALFORMED),
        (ROSTER | {"participants": [*ROSTER["participants"][:2],
                                    ROSTER["participants"][0] | {"agent": "z"}]},
         RejectReason.BAD_KEY),  # keys repeated under another name
        (ROSTER | {"degree": 3}, RejectReason.MALFORMED),  # above n - 1
        (ROSTER | {"threshold": 1}, RejectReason.MALFORMED),  # one share would be the secret
        (ROSTER | {"threshold": 4}, RejectReason.MALFORMED),  # more than k + 1 shares exist
        (ROSTER | {"graph_seed": b"s"}, RejectReason.MALFORMED),
        (ROSTER | {"deadline_s": float("nan")}, RejectReason.NON_FINITE),
        (raw(DOWN[2]) | {"survivors": []}, RejectReason.MALFORMED),
        (raw(DOWN[2]) | {"survivors": ["b", "a"]}, RejectReason.MALFORMED),
        (raw(DOWN[1]) | {"shares": [{"from": "b", "ct": b"1"}]}, RejectReason.MALFORMED),
    ],
)
def test_bad_down_messages_are_refused_with_their_reason(doc, reason):
    refused(doc, reason, down=True)


def test_revealing_both_secrets_of_one_agent_is_refused():
    doc = UNMASK | {"key_shares": [{"of": "a", "share": b"\x00" * 33}]}
    assert "both secrets" in refused(doc, RejectReason.BAD_SHARE).detail


def test_size_limit_and_garbage():
    payload = encode_up(UP[2])
    with pytest.raises(WireError) as exc:
        decode_up(payload, max_bytes=len(payload) - 1)
    assert exc.value.reason is RejectReason.TOO_LARGE
    for junk in (b"", b"\xc1", msgpack.packb([1, 2]), payload + b"\x00"):
        with pytest.raises(WireError) as exc:
            decode_up(junk)
        assert exc.value.reason is RejectReason.MALFORMED


def test_share_pair_plaintext():
    assert decode_share_pair(encode_share_pair(1, PRIME - 1)) == (1, PRIME - 1)
    for bad in (b"", msgpack.packb({"seed": b"1"}), msgpack.packb({"seed": b"\x00" * 33})):
        with pytest.raises(WireError) as exc:
            decode_share_pair(bad)
        assert exc.value.reason is RejectReason.BAD_SHARE


def test_secagg_topics_parse_back():
    t = Topics("demo")
    assert parse_topic(t.secagg_up("pi-01")) == TopicRef("demo", TopicKind.SECAGG, "pi-01",
                                                         direction="up")
    assert parse_topic(t.secagg_down) == TopicRef("demo", TopicKind.SECAGG, direction="down")
    assert parse_topic(t.secagg_down_to("pi-01")) == TopicRef("demo", TopicKind.SECAGG, "pi-01",
                                                              direction="down")
    for bad in ("fedmq/v1/demo/secagg", "fedmq/v1/demo/secagg/up", "fedmq/v1/demo/secagg/side/a",
                "fedmq/v1/demo/secagg/down/a/b", "fedmq/v1/demo/secagg/up/a+b"):
        with pytest.raises(WireError):
            parse_topic(bad)


def test_a_model_announcement_carries_the_secagg_config():
    import dataclasses

    import numpy as np

    from protocol import ModelAnnouncement, TrainPlan, decode_model, encode_model

    config = SecAggConfig(RingSpec(32, 11, 4.0, 500, 200), 10.0)
    plain = ModelAnnouncement(job="demo", run="r1", round=1, model_id="m", task="t",
                              plan=TrainPlan(), codec="none", deadline_s=30.0,
                              weights={"w": np.ones(2, dtype=np.float32)})
    assert b"secagg" not in encode_model(plain)  # plain rounds stay byte for byte
    secure = dataclasses.replace(plain, codec="secagg", cohort=("a", "b"), secagg=config)
    assert decode_model(encode_model(secure)).secagg == config
    for bad, reason in ((dataclasses.replace(secure, cohort=None), RejectReason.MALFORMED),
                        (dataclasses.replace(secure, codec="none"), RejectReason.BAD_CODEC)):
        with pytest.raises(WireError) as exc:
            decode_model(encode_model(bad))
        assert exc.value.reason is reason


def test_metrics_record_who_dropped_in_which_phase():
    import dataclasses

    from protocol import ClosedBy, RoundMetrics, decode_metrics, encode_metrics

    m = RoundMetrics(job="demo", run="r1", round=2, closed_by=ClosedBy.QUORUM, accepted=7,
                     declined=0, rejected={}, samples=70, duration_s=1.0, bytes_up=1, bytes_down=1,
                     raw_bytes_up=1)
    assert b"secagg" not in encode_metrics(m)
    dropped = {"keys": (), "shares": ("a",), "masked": ("b", "c"), "unmask": ()}
    secure = dataclasses.replace(m, secagg=dropped)
    assert decode_metrics(encode_metrics(secure)).secagg == dropped
    import json

    for bad in ({"later": []}, {"keys": "a"}, {"keys": ["a/b"]}, []):
        doc = json.loads(encode_metrics(m)) | {"secagg": bad}
        with pytest.raises(WireError) as exc:
            decode_metrics(json.dumps(doc).encode())
        assert exc.value.reason is RejectReason.MALFORMED
