"""Signed envelopes: Ed25519 over a domain-separated digest of a message's bytes.

A signed model or update is the original encoded message, untouched, wrapped
in a small msgpack map (docs/PROTOCOL.md, "Signed messages")::

    {"v": 1, "type": "signed", "purpose": "model" | "delta" | "update" | "presence" | ...,
     "job": id, "run": id, "signer": id, "body": bin (the encoded message), "sig": bin (64 bytes)}

    sig = Ed25519(signer's key, "fedmq/v1 signed" 0x00 purpose 0x00 job 0x00 run
                  0x00 signer 0x00 SHA-256(body))

Rules of this module:
1. Receivers check the bytes as received, then decode the body: a body whose
   signature failed is never parsed. Chunking happens after sealing, so a
   chunked message reassembles to its envelope.
2. The purpose is signed, so a model signature never passes as an update's
   (and back); job, run and signer are signed, so an update cannot be replayed
   into another job or run, or passed off as another agent's.
3. Pure: no clock, no files. Keys are values (PEM bytes in, key objects out).
   ``cryptography`` is imported only where a key is made or used, so
   ``protocol`` and an agent running unsigned import without it.

Raises :class:`~protocol.errors.WireError` for a peer's bad envelope or
signature; misuse by our own caller raises ``ValueError``.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import RejectReason, WireError
from protocol.fields import MAX_JSON_BYTES
from protocol.keys import SigningKey, VerifyKey
from protocol.messages import SCHEMA_VERSION
from protocol.peek import peek_fields
from protocol.topics import check_id

#: what the coordinator puts in ``signer`` of a model (agents hold one coordinator key)
COORDINATOR_SIGNER = "coordinator"
#: the envelope's own fields (three ids of at most 64 characters, a 64-byte signature)
#: stay well under this many bytes on top of the body
ENVELOPE_OVERHEAD = 512
SIGNATURE_BYTES = 64
_DOMAIN = b"fedmq/v1 signed"


class Purpose(str, enum.Enum):
    """What a signature vouches for; part of the signed bytes (docs/PROTOCOL.md)."""

    #: a global model announcement, signed by the coordinator
    MODEL = "model"
    #: an update or decline, signed by the agent that sends it
    UPDATE = "update"
    #: a partial aggregate, signed by the site aggregator or ingest worker that sends it
    PARTIAL = "partial"
    #: the coordinator's verdict on a partial aggregate, signed by the coordinator
    VERDICT = "verdict"
    #: a model delta or version notice (docs/PROTOCOL.md §15), signed by the coordinator
    DELTA = "delta"
    #: a secure-aggregation message (docs/PROTOCOL.md §14), signed by its sender: the agent
    #: on ``secagg/up/{agent}``, the coordinator on ``secagg/down[/{agent}]``
    SECAGG = "secagg"
    #: an agent's presence (and its last will), signed with its update key; ``run`` is
    #: the agent's session id (docs/PROTOCOL.md §16.1)
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class Signed:
    """A parsed, not yet verified, envelope."""

    purpose: Purpose
    job: str
    run: str
    signer: str
    body: bytes
    sig: bytes

    def signed_bytes(self) -> bytes:
        return signed_bytes(self.purpose, self.job, self.run, self.signer, self.body)


def signed_bytes(purpose: Purpose, job: str, run: str, signer: str, body: bytes) -> bytes:
    """What the Ed25519 signature is computed over. Ids never contain NUL, so it parses back."""
    fields = (purpose.value, job, run, signer)
    return b"\x00".join([_DOMAIN, *(f.encode() for f in fields), hashlib.sha256(body).digest()])


def seal(
    body: bytes, purpose: Purpose, *, job: str, run: str, signer: str, key: SigningKey
) -> bytes:
    """Wrap the encoded message ``body`` in an envelope signed with ``key``.

    Raises:
        ValueError: for an invalid job, run or signer id.
    """
    for value, what in ((job, "job"), (run, "run"), (signer, "signer")):
        check_id(value, what)
    sig = key.sign(signed_bytes(purpose, job, run, signer, body))
    envelope = {
        "v": SCHEMA_VERSION,
        "type": "signed",
        "purpose": purpose.value,
        "job": job,
        "run": run,
        "signer": signer,
        "body": body,
        "sig": sig,
    }
    out: bytes = msgpack.packb(envelope, use_bin_type=True)
    return out


def is_signed(payload: bytes) -> bool:
    """Whether ``payload`` is an envelope; cheap (:func:`protocol.peek.peek_fields`)."""
    try:
        return bool(peek_fields(payload, ("type",)).get("type") == "signed")
    except ValueError:  # not a msgpack map: certainly not an envelope
        return False


def decode_signed(payload: bytes, max_body_bytes: int) -> Signed:
    """Parse an envelope without verifying it.

    Raises:
        WireError: TOO_LARGE above ``max_body_bytes`` plus the envelope's own
            fields, BAD_VERSION for another ``v``, MALFORMED for anything else.
    """
    if len(payload) > max_body_bytes + ENVELOPE_OVERHEAD:
        raise WireError(RejectReason.TOO_LARGE, f"signed: {len(payload)} bytes")
    try:
        obj: Any = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(RejectReason.MALFORMED, f"signed: not msgpack ({exc})") from None
    if not isinstance(obj, Mapping):
        raise WireError(RejectReason.MALFORMED, "signed: expected a map")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool) or version != SCHEMA_VERSION:
        raise WireError(RejectReason.BAD_VERSION, f"signed: schema version {version!r}, want 1")
    if obj.get("type") != "signed":
        raise WireError(RejectReason.MALFORMED, f"expected type 'signed', got {obj.get('type')!r}")
    try:
        purpose = Purpose(obj.get("purpose"))
    except ValueError:
        raise WireError(RejectReason.MALFORMED, f"signed.purpose: {obj.get('purpose')!r}") from None
    body, sig = obj.get("body"), obj.get("sig")
    if not isinstance(body, bytes):
        raise WireError(RejectReason.MALFORMED, "signed.body: expected binary")
    if len(body) > max_body_bytes:
        raise WireError(RejectReason.TOO_LARGE, f"signed.body: {len(body)} > {max_body_bytes} B")
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        raise WireError(RejectReason.MALFORMED, f"signed.sig: expected {SIGNATURE_BYTES} bytes")
    return Signed(purpose, _ident(obj, "job"), _ident(obj, "run"), _ident(obj, "signer"), body, sig)


def _ident(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise WireError(RejectReason.MALFORMED, f"signed.{key}: expected an id")
    try:
        return check_id(value, key)
    except ValueError as exc:
        raise WireError(RejectReason.MALFORMED, f"signed.{key}: {exc}") from None


def _verified(envelope: Signed, key: VerifyKey) -> bytes:
    if not key.verify(envelope.sig, envelope.signed_bytes()):
        detail = f"{envelope.purpose.value} signed by {envelope.signer!r} does not verify"
        raise WireError(RejectReason.BAD_SIGNATURE, f"{detail} with key {key.fingerprint}")
    return envelope.body


def open_model(
    payload: bytes,
    *,
    job: str,
    key: VerifyKey | None,
    max_body_bytes: int,
    purpose: Purpose = Purpose.MODEL,
) -> bytes:
    """The model (or, with ``purpose`` DELTA, model delta) bytes inside ``payload``, checked
    against the coordinator's ``key``.

    ``purpose`` SECAGG opens the coordinator's SecAgg messages the same way.

    With ``key`` None (an agent running unsigned) an envelope is unwrapped
    unverified and a bare model passes through.

    Raises:
        WireError: UNSIGNED for a bare model when ``key`` is set; WRONG_JOB;
            BAD_SIGNATURE; MALFORMED, BAD_VERSION or TOO_LARGE for a bad envelope.
    """
    if not is_signed(payload):
        if key is not None:
            raise WireError(RejectReason.UNSIGNED, f"{purpose.value} is not signed")
        return payload
    envelope = _expect(decode_signed(payload, max_body_bytes), purpose)
    if key is None:
        return envelope.body
    if envelope.job != job:
        raise WireError(RejectReason.WRONG_JOB, f"{purpose.value} signed for job {envelope.job!r}")
    return _verified(envelope, key)


def open_update(
    payload: bytes,
    *,
    job: str,
    run: str,
    agent: str,
    keys: Mapping[str, VerifyKey] | None,
    max_body_bytes: int,
    purpose: Purpose = Purpose.UPDATE,
) -> bytes:
    """The update bytes inside ``payload``, sent on ``agent``'s topic, checked against ``keys``.

    ``purpose`` SECAGG opens an agent's SecAgg messages the same way.

    With ``keys`` None (a coordinator running unsigned) an envelope is
    unwrapped unverified and a bare update passes through.

    Raises:
        WireError: UNSIGNED for a bare update when ``keys`` is set; WRONG_JOB;
            AGENT_MISMATCH (signer is not the topic's agent); WRONG_RUN (signed
            for another run); UNKNOWN_AGENT (no key for the agent);
            BAD_SIGNATURE; MALFORMED, BAD_VERSION or TOO_LARGE for a bad envelope.
    """
    return _open_run_bound(payload, purpose, job=job, run=run, signer=agent, keys=keys,
                           max_body_bytes=max_body_bytes, whose="update")


def open_partial(
    payload: bytes,
    *,
    job: str,
    run: str,
    aggregator: str,
    keys: Mapping[str, VerifyKey] | None,
    max_body_bytes: int,
) -> bytes:
    """The partial aggregate inside ``payload``, sent on ``aggregator``'s topic: as
    :func:`open_update`, with the aggregators' keys."""
    return _open_run_bound(payload, Purpose.PARTIAL, job=job, run=run, signer=aggregator,
                           keys=keys, max_body_bytes=max_body_bytes, whose="aggregator")


def _open_run_bound(
    payload: bytes,
    purpose: Purpose,
    *,
    job: str,
    run: str,
    signer: str,
    keys: Mapping[str, VerifyKey] | None,
    max_body_bytes: int,
    whose: str,
) -> bytes:
    """What ``signer`` (named by the topic) sealed for ``purpose`` in ``run``; see
    :func:`open_update`."""
    envelope = _from_agent(
        payload, purpose, job=job, agent=signer, keys=keys, max_body_bytes=max_body_bytes
    )
    if envelope is None:
        return payload
    if keys is None:
        return envelope.body
    if envelope.run != run:
        raise WireError(RejectReason.WRONG_RUN, f"signed for run {envelope.run!r}, not {run!r}")
    return _verified(envelope, _signer_key(keys, signer, whose))


def open_presence(
    payload: bytes, *, job: str, agent: str, keys: Mapping[str, VerifyKey] | None
) -> tuple[bytes, str | None]:
    """The presence document inside ``payload`` and the session it was signed in (None
    for a bare one), checked against ``agent``'s key in ``keys``, as :func:`open_update`.

    Raises:
        WireError: as :func:`open_update`, without WRONG_RUN: the session is the caller's.
    """
    envelope = _from_agent(
        payload, Purpose.PRESENCE, job=job, agent=agent, keys=keys, max_body_bytes=MAX_JSON_BYTES
    )
    if envelope is None:
        return payload, None
    if keys is None:
        return envelope.body, envelope.run
    return _verified(envelope, _signer_key(keys, agent, "update")), envelope.run


def _from_agent(
    payload: bytes,
    purpose: Purpose,
    *,
    job: str,
    agent: str,
    keys: Mapping[str, VerifyKey] | None,
    max_body_bytes: int,
) -> Signed | None:
    """The parsed envelope of an agent's (or aggregator's) message (None: bare), its job
    and signer checked when ``keys`` is set. Raises WireError as :func:`open_update`."""
    if not is_signed(payload):
        if keys is not None:
            raise WireError(RejectReason.UNSIGNED, f"{purpose.value} is not signed")
        return None
    envelope = _expect(decode_signed(payload, max_body_bytes), purpose)
    if keys is not None and envelope.job != job:
        raise WireError(RejectReason.WRONG_JOB, f"{purpose.value} signed for job {envelope.job!r}")
    if keys is not None and envelope.signer != agent:
        raise WireError(RejectReason.AGENT_MISMATCH, f"signed by {envelope.signer!r}")
    return envelope


def _signer_key(keys: Mapping[str, VerifyKey], signer: str, whose: str) -> VerifyKey:
    key = keys.get(signer)
    if key is None:
        raise WireError(RejectReason.UNKNOWN_AGENT, f"no {whose} key provisioned for {signer!r}")
    return key


def _expect(envelope: Signed, purpose: Purpose) -> Signed:
    if envelope.purpose is not purpose:
        detail = f"a {envelope.purpose.value} envelope where a {purpose.value} belongs"
        raise WireError(RejectReason.MALFORMED, detail)
    return envelope
