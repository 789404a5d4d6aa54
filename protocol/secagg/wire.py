"""SecAgg messages <-> msgpack, with full validation (docs/PROTOCOL.md §14).

Check order as for every fedmq message: size (``too_large``), parse (``malformed``),
``v`` (``bad_version``), ``type`` (``malformed``), then the fields. Beyond the
common rules: public keys are 32 bytes and distinct (``bad_key``); shares are 33
bytes inside the field (``bad_share``); lists of agents are strictly sorted, so a
repeated agent is ``malformed``; an agent never reveals both secrets of one peer
(``bad_share``). Every ``decode_*`` raises :class:`~protocol.errors.WireError`
only; which messages are acceptable *now* is the phase machines' business.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from protocol.errors import RejectReason, WireError
from protocol.fields import DEFAULT_MAX_BYTES, Fields, header, pack, unpack
from protocol.messages import SCHEMA_VERSION
from protocol.secagg.fixedpoint import RING_BITS, RingSpec
from protocol.secagg.messages import (
    DownMessage,
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
    UpMessage,
)
from protocol.secagg.shamir import SHARE_BYTES, share_from_bytes, share_to_bytes

MAX_PARTICIPANTS = 100_000
KEY_BYTES = 32
SEED_BYTES = 16
#: an encrypted share pair is 87 bytes (70 of msgpack, a 16-byte tag); room to spare
MAX_CIPHERTEXT = 256
_MAX_DEADLINE_S = 1e7


# --- common pieces -----------------------------------------------------------------


def _session_doc(kind: str, s: Session) -> dict[str, Any]:
    return {"v": SCHEMA_VERSION, "type": kind, "job": s.job, "run": s.run, "round": s.round,
            "attempt": s.attempt}


def _session(f: Fields) -> Session:
    return Session(f.ident("job"), f.ident("run"), f.integer("round", 1),
                   f.integer("attempt", 0, 1_000_000))


def _binary(f: Fields, key: str, size: int, reason: RejectReason = RejectReason.MALFORMED,
            exact: bool = True) -> bytes:
    value = f.obj.get(key)
    if not isinstance(value, bytes):
        raise WireError(RejectReason.MALFORMED, f"{f.what}.{key}: expected binary")
    if (len(value) != size) if exact else (len(value) > size):
        want = f"{size}" if exact else f"<= {size}"
        raise WireError(reason, f"{f.what}.{key}: {len(value)} bytes, want {want}")
    return value


def _entries(f: Fields, key: str, limit: int = MAX_PARTICIPANTS) -> list[Fields]:
    value = f.obj.get(key)
    if not isinstance(value, list):
        raise WireError(RejectReason.MALFORMED, f"{f.what}.{key}: expected a list")
    if len(value) > limit:
        raise WireError(RejectReason.TOO_LARGE, f"{f.what}.{key}: {len(value)} entries")
    return [Fields(v, f"{f.what}.{key}[{i}]") for i, v in enumerate(value)]


def _sorted_ids(ids: list[str], what: str) -> tuple[str, ...]:
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise WireError(RejectReason.MALFORMED, f"{what}: agents must be sorted and unique")
    return tuple(ids)


def _id_list(f: Fields, key: str) -> tuple[str, ...]:
    value = f.obj.get(key)
    if not isinstance(value, list) or len(value) > MAX_PARTICIPANTS:
        raise WireError(RejectReason.MALFORMED, f"{f.what}.{key}: expected a list of ids")
    return _sorted_ids([Fields({"a": a}, f"{f.what}.{key}").ident("a") for a in value],
                       f"{f.what}.{key}")


def _sealed(f: Fields, key: str, peer: str, sender: str) -> tuple[Sealed, ...]:
    out = [Sealed(e.ident(peer), _binary(e, "ct", MAX_CIPHERTEXT, RejectReason.BAD_SHARE, False))
           for e in _entries(f, key)]
    _sorted_ids([s.peer for s in out], f"{f.what}.{key}")
    if sender in {s.peer for s in out}:
        raise WireError(RejectReason.MALFORMED, f"{f.what}.{key}: names {sender!r} itself")
    return tuple(out)


def _revealed(f: Fields, key: str) -> tuple[Revealed, ...]:
    out = [Revealed(e.ident("of"), share_from_bytes(e.obj.get("share"), e.what))
           for e in _entries(f, key)]
    _sorted_ids([r.owner for r in out], f"{f.what}.{key}")
    return tuple(out)


def _deadline(f: Fields) -> float:
    return f.number("deadline_s", 0.0, _MAX_DEADLINE_S)


# --- the announcement's ``secagg`` map --------------------------------------------------


def encode_config(c: SecAggConfig) -> dict[str, Any]:
    r = c.ring
    return {"ring_bits": r.ring_bits, "frac_bits": r.frac_bits, "clip": r.clip,
            "weight_max": r.weight_max, "max_agents": r.max_agents, "keys_s": c.keys_s}


def decode_config(obj: Any) -> SecAggConfig:
    """The ``secagg`` map of a model announcement.

    Raises:
        WireError: MALFORMED for bad fields or bounds under which the sum could overflow.
    """
    f = Fields(obj, "model.secagg")
    ring_bits = f.integer("ring_bits", 0, 64)
    if ring_bits not in RING_BITS:
        raise WireError(RejectReason.MALFORMED, f"model.secagg.ring_bits={ring_bits}")
    try:
        ring = RingSpec(ring_bits, f.integer("frac_bits", 0, 62), f.number("clip", 0.0, 1e30),
                        f.integer("weight_max", 1, 2**40), f.integer("max_agents", 1,
                                                                      MAX_PARTICIPANTS))
    except ValueError as exc:
        raise WireError(RejectReason.MALFORMED, f"model.secagg: {exc}") from None
    return SecAggConfig(ring, f.number("keys_s", 0.0, _MAX_DEADLINE_S))


# --- agent -> coordinator -------------------------------------------------------------


def encode_up(m: UpMessage) -> bytes:
    match m:
        case KeysAdvert():
            doc = _session_doc("secagg_keys", m.session) | {
                "agent": m.agent, "enc_pk": m.enc_pk, "mask_pk": m.mask_pk}
        case SharesOut():
            doc = _session_doc("secagg_shares", m.session) | {
                "agent": m.agent, "commitment": m.commitment,
                "shares": [{"to": s.peer, "ct": s.ciphertext} for s in m.shares]}
        case MaskedInput():
            doc = _session_doc("secagg_masked", m.session) | {"agent": m.agent, "data": m.data}
        case UnmaskShares():
            doc = _session_doc("secagg_unmask", m.session) | {
                "agent": m.agent,
                "seed_shares": [{"of": r.owner, "share": share_to_bytes(r.share)}
                                for r in m.seed_shares],
                "key_shares": [{"of": r.owner, "share": share_to_bytes(r.share)}
                               for r in m.key_shares]}
    return pack(doc)


def _keys(f: Fields) -> KeysAdvert:
    enc, mask = (_binary(f, k, KEY_BYTES, RejectReason.BAD_KEY) for k in ("enc_pk", "mask_pk"))
    if enc == mask:
        raise WireError(RejectReason.BAD_KEY, "secagg_keys: the two public keys are equal")
    return KeysAdvert(_session(f), f.ident("agent"), enc, mask)


def _shares(f: Fields) -> SharesOut:
    agent = f.ident("agent")
    return SharesOut(_session(f), agent, _binary(f, "commitment", 32),
                     _sealed(f, "shares", "to", agent))


def _masked(f: Fields) -> MaskedInput:
    data = f.obj.get("data")
    if not isinstance(data, bytes) or len(data) % 4:
        raise WireError(RejectReason.MALFORMED, "secagg_masked.data: expected 4-byte elements")
    return MaskedInput(_session(f), f.ident("agent"), data)


def _unmask(f: Fields) -> UnmaskShares:
    seeds, keys = _revealed(f, "seed_shares"), _revealed(f, "key_shares")
    both = {r.owner for r in seeds} & {r.owner for r in keys}
    if both:  # revealing both would unmask that agent's input (Bonawitz et al. §4)
        raise WireError(RejectReason.BAD_SHARE, f"secagg_unmask: both secrets of {min(both)!r}")
    return UnmaskShares(_session(f), f.ident("agent"), seeds, keys)


_UP: dict[str, Callable[[Fields], UpMessage]] = {
    "secagg_keys": _keys, "secagg_shares": _shares, "secagg_masked": _masked,
    "secagg_unmask": _unmask,
}


def decode_up(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> UpMessage:
    """Any message an agent sends on ``secagg/up/{agent}``.

    Raises:
        WireError: for anything too large, malformed, of another version, or with bad
            keys or shares.
    """
    message: UpMessage = _dispatch(payload, max_bytes, _UP)
    return message


# --- coordinator -> agents --------------------------------------------------------------


def encode_down(m: DownMessage) -> bytes:
    match m:
        case Roster():
            doc = _session_doc("secagg_roster", m.session) | {
                "participants": [{"agent": p.agent, "enc_pk": p.enc_pk, "mask_pk": p.mask_pk}
                                 for p in m.participants],
                "degree": m.degree, "threshold": m.threshold, "graph_seed": m.graph_seed,
                "deadline_s": m.deadline_s}
        case Relay():
            doc = _session_doc("secagg_relay", m.session) | {
                "agent": m.agent,
                "shares": [{"from": s.peer, "ct": s.ciphertext} for s in m.shares],
                "deadline_s": m.deadline_s}
        case Survivors():
            doc = _session_doc("secagg_survivors", m.session) | {
                "survivors": list(m.survivors), "deadline_s": m.deadline_s}
    return pack(doc)


def _roster(f: Fields) -> Roster:
    people = tuple(Participant(e.ident("agent"), _binary(e, "enc_pk", KEY_BYTES,
                                                         RejectReason.BAD_KEY),
                               _binary(e, "mask_pk", KEY_BYTES, RejectReason.BAD_KEY))
                   for e in _entries(f, "participants"))
    _sorted_ids([p.agent for p in people], "secagg_roster.participants")
    keys = [k for p in people for k in (p.enc_pk, p.mask_pk)]
    if len(set(keys)) != len(keys):
        raise WireError(RejectReason.BAD_KEY, "secagg_roster: a public key appears twice")
    n = len(people)
    if n < 2:
        raise WireError(RejectReason.MALFORMED, "secagg_roster: fewer than 2 participants")
    degree = f.integer("degree", 1, n - 1)
    if degree != n - 1 and degree % 2:
        raise WireError(RejectReason.MALFORMED, f"secagg_roster.degree={degree} is odd")
    threshold = f.integer("threshold", 2, degree + 1)
    return Roster(_session(f), people, degree, threshold, _binary(f, "graph_seed", SEED_BYTES),
                  _deadline(f))


def _relay(f: Fields) -> Relay:
    agent = f.ident("agent")
    return Relay(_session(f), agent, _sealed(f, "shares", "from", agent), _deadline(f))


def _survivors(f: Fields) -> Survivors:
    survivors = _id_list(f, "survivors")
    if not survivors:
        raise WireError(RejectReason.MALFORMED, "secagg_survivors: nobody survived")
    return Survivors(_session(f), survivors, _deadline(f))


_DOWN: dict[str, Callable[[Fields], DownMessage]] = {
    "secagg_roster": _roster, "secagg_relay": _relay, "secagg_survivors": _survivors,
}


def decode_down(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> DownMessage:
    """Any message the coordinator sends on ``secagg/down`` or ``secagg/down/{agent}``.

    Raises:
        WireError: for anything too large, malformed, of another version, or with bad keys.
    """
    message: DownMessage = _dispatch(payload, max_bytes, _DOWN)
    return message


def _dispatch(payload: bytes, max_bytes: int, table: Mapping[str, Callable[[Fields], Any]]
              ) -> Any:
    obj = unpack(payload, max_bytes, "secagg")
    if not isinstance(obj, Mapping):
        raise WireError(RejectReason.MALFORMED, "secagg: expected a map")
    kind = obj.get("type")
    decoder = table.get(kind) if isinstance(kind, str) else None
    # _header checks the version first, then (for an unknown type) refuses the type
    f = header(obj, kind if decoder is not None and isinstance(kind, str) else "secagg")
    assert decoder is not None
    return decoder(f)


# --- the plaintext inside an encrypted share ------------------------------------------------


def encode_share_pair(seed_share: int, key_share: int) -> bytes:
    return pack({"seed": share_to_bytes(seed_share), "key": share_to_bytes(key_share)})


def decode_share_pair(plaintext: bytes) -> tuple[int, int]:
    """(share of the self-mask seed, share of the mask key) from a decrypted share.

    Raises:
        WireError: BAD_SHARE for anything but two 33-byte field elements.
    """
    try:
        f = Fields(unpack(plaintext, 4 * SHARE_BYTES, "share"), "share")
        return share_from_bytes(f.obj.get("seed"), "seed"), share_from_bytes(f.obj.get("key"),
                                                                             "key")
    except WireError as exc:
        raise WireError(RejectReason.BAD_SHARE, f"decrypted share: {exc.detail}") from None

