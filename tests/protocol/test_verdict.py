"""The verdict: the coordinator's answer to one partial aggregate, checked like every message."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from protocol import RejectReason, WireError
from protocol.partial import MAX_VERDICT_BYTES, Verdict, decode_verdict, encode_verdict

REFUSED = Verdict(job="j", run="r1", round=3, aggregator="worker-2", partial="ab" * 32,
                  merged=False, reason="duplicate", counted=("a1", "a7"))


def fields(**changes: Any) -> bytes:
    obj = msgpack.unpackb(encode_verdict(REFUSED))
    obj.update(changes)
    return msgpack.packb(obj)


def test_a_verdict_round_trips() -> None:
    assert decode_verdict(encode_verdict(REFUSED)) == REFUSED
    merged = Verdict(job="j", run="r1", round=0, aggregator="w", partial="0" * 64, merged=True)
    assert decode_verdict(encode_verdict(merged)) == merged


@pytest.mark.parametrize(("changes", "reason"), [
    ({"v": 2}, RejectReason.BAD_VERSION),
    ({"type": "partial"}, RejectReason.MALFORMED),
    ({"merged": 1}, RejectReason.MALFORMED),
    ({"merged": True}, RejectReason.MALFORMED),  # a reason although merged
    ({"reason": ""}, RejectReason.MALFORMED),  # refused without a reason
    ({"partial": "AB" * 32}, RejectReason.MALFORMED),
    ({"partial": "ab" * 31}, RejectReason.MALFORMED),
    ({"counted": ["bad id"]}, RejectReason.MALFORMED),
    ({"counted": "a1"}, RejectReason.MALFORMED),
    ({"round": -1}, RejectReason.MALFORMED),
    ({"aggregator": "x/y"}, RejectReason.MALFORMED),
])
def test_a_bad_verdict_is_refused_with_its_reason(changes: dict[str, Any],
                                                  reason: RejectReason) -> None:
    with pytest.raises(WireError) as caught:
        decode_verdict(fields(**changes))
    assert caught.value.reason is reason


def test_an_oversized_or_non_msgpack_verdict_is_refused() -> None:
    with pytest.raises(WireError) as caught:
        decode_verdict(b"\x00" * (MAX_VERDICT_BYTES + 1))
    assert caught.value.reason is RejectReason.TOO_LARGE
    with pytest.raises(WireError) as caught:
        decode_verdict(b"\xc1")
    assert caught.value.reason is RejectReason.MALFORMED
