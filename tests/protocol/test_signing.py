"""Signed envelopes: a golden vector, the receivers' checks in order, and fuzzing.

The golden vector uses RFC 8032's first test key, so another implementation can
reproduce the exact bytes (Ed25519 signatures are deterministic).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import RejectReason, WireError
from protocol.keys import SigningKey, VerifyKey
from protocol.signing import (
    ENVELOPE_OVERHEAD,
    Purpose,
    decode_signed,
    is_signed,
    open_model,
    open_update,
    seal,
)

#: RFC 8032 section 7.1, TEST 1: the secret key and its public key
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

#: seal(b"hello", update, job "demo", run "r1", signer "pi-01") with the RFC 8032 key
GOLDEN_ENVELOPE = bytes.fromhex(
    "88"  # map, 8 entries
    "a176" "01"  # "v": 1
    "a474797065" "a67369676e6564"  # "type": "signed"
    "a7707572706f7365" "a6757064617465"  # "purpose": "update"
    "a36a6f62" "a464656d6f"  # "job": "demo"
    "a372756e" "a27231"  # "run": "r1"
    "a67369676e6572" "a570692d3031"  # "signer": "pi-01"
    "a4626f6479" "c405" "68656c6c6f"  # "body": bin8, 5 bytes "hello"
    "a3736967" "c440"  # "sig": bin8, 64 bytes
    "58fb1a37b6ba2e7b464ded45de11a44b8a7f4de84319865894b09465b3adf063"
    "9404f7939331567d7a8a233ab7b3f5bf4b9a7c8dd0f464fa402023f20470300b"
)

KEY = SigningKey.from_seed(RFC8032_SEED)
OTHER = SigningKey.from_seed(bytes(range(32)))
JOB, RUN = "demo", "r1"


def update(body: bytes = b"hello", *, key: SigningKey = KEY, signer: str = "pi-01",
           job: str = JOB, run: str = RUN, purpose: Purpose = Purpose.UPDATE) -> bytes:
    return seal(body, purpose, job=job, run=run, signer=signer, key=key)


def open_as_coordinator(payload: bytes, agent: str = "pi-01",
                        keys: dict[str, VerifyKey] | None = None) -> bytes:
    keys = {"pi-01": KEY.public, "pi-02": OTHER.public} if keys is None else keys
    return open_update(payload, job=JOB, run=RUN, agent=agent, keys=keys, max_body_bytes=1 << 20)


def reason_of(call: object) -> RejectReason:
    assert callable(call)
    with pytest.raises(WireError) as excinfo:
        call()
    return excinfo.value.reason


# --- golden ------------------------------------------------------------------------------


def test_the_rfc8032_key_gives_its_public_key():
    assert KEY.public.raw == RFC8032_PUBLIC


def test_seal_golden_bytes_both_ways():
    assert update() == GOLDEN_ENVELOPE
    assert open_as_coordinator(GOLDEN_ENVELOPE) == b"hello"


def test_the_signature_is_over_the_documented_bytes():
    # Rebuilt by hand from docs/PROTOCOL.md, independently of protocol.signing.
    message = b"\x00".join(
        [b"fedmq/v1 signed", b"update", b"demo", b"r1", b"pi-01", hashlib.sha256(b"hello").digest()]
    )
    sig = msgpack.unpackb(GOLDEN_ENVELOPE)["sig"]
    assert VerifyKey(RFC8032_PUBLIC).verify(sig, message)
    assert not VerifyKey(RFC8032_PUBLIC).verify(sig, message.replace(b"update", b"model!"))


def test_keys_round_trip_through_pem():
    assert SigningKey.from_pem(KEY.to_pem()).public == KEY.public
    assert VerifyKey.from_pem(KEY.public.to_pem()) == KEY.public
    assert KEY.to_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert KEY.public.fingerprint in repr(KEY) and RFC8032_SEED.hex() not in repr(KEY)


def test_pem_of_another_key_type_is_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ecdsa = ec.generate_private_key(ec.SECP256R1())
    pem = ecdsa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    with pytest.raises(ValueError, match="not an Ed25519 private key"):
        SigningKey.from_pem(pem)
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        VerifyKey.from_pem(ecdsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


# --- the coordinator's checks ------------------------------------------------------------


def test_is_signed_tells_an_envelope_from_a_bare_message():
    assert is_signed(GOLDEN_ENVELOPE)
    assert not is_signed(msgpack.packb({"v": 1, "type": "update"}))
    assert not is_signed(b"\xff garbage")


def test_an_unsigned_update_is_refused_when_keys_are_provisioned():
    bare = msgpack.packb({"v": 1, "type": "update"})
    assert reason_of(lambda: open_as_coordinator(bare)) is RejectReason.UNSIGNED


@pytest.mark.parametrize("where", ["body start", "body end", "sig start", "sig end"])
def test_an_altered_update_is_a_bad_signature(where: str):
    payload = update(b"hello" * 10)
    body_at = payload.index(b"hello")
    index = {"body start": body_at, "body end": body_at + 49,
             "sig start": len(payload) - 64, "sig end": len(payload) - 1}[where]
    altered = bytearray(payload)
    altered[index] ^= 0x01  # the envelope still parses; only the signature can tell
    assert reason_of(lambda: open_as_coordinator(bytes(altered))) is RejectReason.BAD_SIGNATURE


def test_a_forged_update_is_a_bad_signature():
    forged = update(key=OTHER)  # pi-01's name, someone else's key
    assert reason_of(lambda: open_as_coordinator(forged)) is RejectReason.BAD_SIGNATURE


def test_another_agents_update_replayed_on_this_topic_is_an_agent_mismatch():
    # pi-01's genuine update, published on pi-02's topic
    assert reason_of(lambda: open_as_coordinator(update(), agent="pi-02")) \
        is RejectReason.AGENT_MISMATCH
    # renaming the signer to pi-02 breaks the signature instead
    renamed = msgpack.unpackb(update())
    renamed["signer"] = "pi-02"
    forged = msgpack.packb(renamed)
    assert reason_of(lambda: open_as_coordinator(forged, agent="pi-02")) \
        is RejectReason.BAD_SIGNATURE


def test_an_update_from_another_run_or_job_is_refused():
    assert reason_of(lambda: open_as_coordinator(update(run="r0"))) is RejectReason.WRONG_RUN
    assert reason_of(lambda: open_as_coordinator(update(job="other"))) is RejectReason.WRONG_JOB


def test_an_agent_without_a_provisioned_key_is_unknown():
    payload = update(signer="pi-09", key=OTHER)
    assert reason_of(lambda: open_as_coordinator(payload, agent="pi-09")) \
        is RejectReason.UNKNOWN_AGENT


def test_a_model_signature_never_passes_as_an_update():
    as_model = update(purpose=Purpose.MODEL)
    assert reason_of(lambda: open_as_coordinator(as_model)) is RejectReason.MALFORMED
    # and the purpose is signed: relabelling the envelope breaks the signature
    relabelled = msgpack.unpackb(as_model)
    relabelled["purpose"] = "update"
    forged = msgpack.packb(relabelled)
    assert reason_of(lambda: open_as_coordinator(forged)) is RejectReason.BAD_SIGNATURE


def test_unsigned_mode_unwraps_without_verifying():
    forged = update(key=OTHER)
    assert open_update(forged, job=JOB, run=RUN, agent="x", keys=None, max_body_bytes=99) \
        == b"hello"
    assert open_update(b"bare", job=JOB, run=RUN, agent="x", keys=None, max_body_bytes=99) \
        == b"bare"


# --- the agent's checks ------------------------------------------------------------------


def open_as_agent(payload: bytes, key: VerifyKey | None = KEY.public) -> bytes:
    return open_model(payload, job=JOB, key=key, max_body_bytes=1 << 20)


def test_a_model_signed_by_the_coordinator_opens():
    assert open_as_agent(update(b"model", signer="coordinator", purpose=Purpose.MODEL)) == b"model"


def test_an_agent_refuses_a_forged_unsigned_or_misdirected_model():
    forged = update(b"model", key=OTHER, signer="coordinator", purpose=Purpose.MODEL)
    assert reason_of(lambda: open_as_agent(forged)) is RejectReason.BAD_SIGNATURE
    assert reason_of(lambda: open_as_agent(b"\x80")) is RejectReason.UNSIGNED
    other_job = update(b"model", job="other", purpose=Purpose.MODEL)
    assert reason_of(lambda: open_as_agent(other_job)) is RejectReason.WRONG_JOB
    # an agent's own signed update, echoed on the model topic
    assert reason_of(lambda: open_as_agent(update(b"model"))) is RejectReason.MALFORMED


# --- bad envelopes -----------------------------------------------------------------------


def envelope(**changes: object) -> bytes:
    obj = msgpack.unpackb(GOLDEN_ENVELOPE)
    obj.update(changes)
    return msgpack.packb({k: v for k, v in obj.items() if v is not None})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (envelope(v=2), RejectReason.BAD_VERSION),
        (envelope(v=True), RejectReason.BAD_VERSION),
        (envelope(purpose="metrics"), RejectReason.MALFORMED),
        (envelope(job="a/b"), RejectReason.MALFORMED),
        (envelope(signer=7), RejectReason.MALFORMED),
        (envelope(run=None), RejectReason.MALFORMED),
        (envelope(body="hello"), RejectReason.MALFORMED),
        (envelope(sig=b"short"), RejectReason.MALFORMED),
        (msgpack.packb([1, 2]), RejectReason.MALFORMED),
        (GOLDEN_ENVELOPE + b"\x00", RejectReason.MALFORMED),
    ],
)
def test_malformed_envelopes_are_refused_with_their_reason(payload: bytes, reason: RejectReason):
    assert reason_of(lambda: decode_signed(payload, 1 << 20)) is reason


def test_an_oversized_envelope_or_body_is_too_large():
    assert reason_of(lambda: decode_signed(GOLDEN_ENVELOPE, 4)) is RejectReason.TOO_LARGE
    big = update(b"x" * 2000)
    assert reason_of(lambda: decode_signed(big, 2000 - ENVELOPE_OVERHEAD)) \
        is RejectReason.TOO_LARGE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_body_or_a_wire_error(junk: bytes):
    for payload in (junk, GOLDEN_ENVELOPE[: len(junk) % len(GOLDEN_ENVELOPE)] + junk):
        for opener in (open_as_coordinator, open_as_agent):
            try:
                body = opener(payload)
            except WireError as exc:
                assert isinstance(exc.reason, RejectReason) and exc.detail
            else:  # only a whole, verified envelope opens, and its body is carried inside it
                assert body in payload and len(payload) > len(body) + ENVELOPE_OVERHEAD // 2


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(GOLDEN_ENVELOPE) - 1), st.integers(1, 255))
def test_no_single_byte_change_survives(index: int, flip: int):
    altered = bytearray(GOLDEN_ENVELOPE)
    altered[index] ^= flip
    with pytest.raises(WireError):
        open_as_coordinator(bytes(altered))


def test_protocol_doc_shows_the_golden_envelope():
    # docs/PROTOCOL.md section 11.4: hex on the left, a comment after three or more spaces.
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text()
    section = doc[doc.index("### 11.4") :]
    dump = re.findall(r"```\n(.*?)```", section, flags=re.DOTALL)[0]
    hex_columns = [re.split(r" {3,}", line.strip())[0] for line in dump.splitlines()]
    assert bytes.fromhex(" ".join(hex_columns)) == GOLDEN_ENVELOPE
