"""SecAgg's primitives against published vectors, and the mask graph."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol import RejectReason, WireError
from protocol.secagg import crypto
from protocol.secagg.graph import connected, effective_degree, neighbours
from protocol.secagg.messages import Session

# RFC 7748 §6.1
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
# points of small order and their non-canonical encodings (as libsodium refuses them)
LOW_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ec" + "ff" * 30 + "7f"),
    bytes.fromhex("ed" + "ff" * 30 + "7f"),
    bytes.fromhex("ee" + "ff" * 30 + "7f"),
]
SESSION = Session("demo", "r1", 1, 0)


def test_x25519_matches_rfc7748():
    assert crypto.public_of(ALICE).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert crypto.agree(ALICE, crypto.public_of(BOB)) == SHARED
    assert crypto.agree(BOB, crypto.public_of(ALICE)) == SHARED


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8])
def test_low_order_public_keys_are_bad_keys(point):
    with pytest.raises(WireError) as exc:
        crypto.agree(ALICE, point)
    assert exc.value.reason is RejectReason.BAD_KEY


def test_prg_is_the_aes256_ctr_keystream_from_counter_zero():
    # keystream block i = AES-256(key, i as a 128-bit big-endian counter), read little-endian
    key = bytes(range(32))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = ecb.update(b"".join(i.to_bytes(16, "big") for i in range(3))) + ecb.finalize()
    assert crypto.prg(key, 12, np.dtype("<u4")).tobytes() == blocks
    assert list(crypto.prg(key, 4, np.dtype("<u4"))) == [
        3053490418, 3500099882, 1788539817, 2155294429]
    assert crypto.prg(key, 6, np.dtype("<u8")).tobytes() == blocks


def test_prg_output_is_uniform():
    out = crypto.prg(bytes(32), 1 << 16, np.dtype("<u4")).view(np.uint8)
    counts = np.bincount(out, minlength=256)
    expected = out.size / 256
    assert ((counts - expected) ** 2 / expected).sum() < 330.5  # 255 dof, p = 0.001


def test_derived_keys_are_bound_to_purpose_session_and_peers():
    assert crypto.info("pair", ("demo", "r1", 1, 0, "a", "b")) == (
        b"fedmq/v1 secagg\x00pair\x00demo\x00r1\x001\x000\x00a\x00b")
    assert crypto.derive(bytes(32), "self", (*SESSION.fields, "pi-01")).hex() == (
        "6030ba92208b1717caf1e7a468e2ee625cf78d8ea4f0992642d2084980315c1a")
    assert crypto.pair_key(SHARED, SESSION, "a", "b") == crypto.pair_key(SHARED, SESSION, "b", "a")
    other = Session("demo", "r1", 1, 1)
    assert crypto.pair_key(SHARED, SESSION, "a", "b") != crypto.pair_key(SHARED, other, "a", "b")
    ab = crypto.share_key(SHARED, SESSION, "a", "b")
    ba = crypto.share_key(SHARED, SESSION, "b", "a")
    assert ab[0] != ba[0]  # each direction its own key: a fixed nonce is never reused
    assert crypto.self_key(SHARED, SESSION, "a") != crypto.pair_key(SHARED, SESSION, "a", "a")


def test_aead_refuses_altered_ciphertext_or_context():
    key, aad = crypto.share_key(SHARED, SESSION, "a", "b")
    ct = crypto.encrypt(key, aad, b"share")
    assert crypto.decrypt(key, aad, ct) == b"share"
    for k, a, c in ((key, aad + b"x", ct), (key, aad, ct[:-1] + bytes([ct[-1] ^ 1])),
                    (crypto.share_key(SHARED, SESSION, "b", "a")[0], aad, ct)):
        with pytest.raises(WireError) as exc:
            crypto.decrypt(k, a, c)
        assert exc.value.reason is RejectReason.BAD_SHARE


def test_commitment_binds_the_seed():
    c = crypto.commitment(bytes(32), SESSION.fields)
    assert len(c) == 32 and c != crypto.commitment(b"\x01" + bytes(31), SESSION.fields)


# --- the mask graph ---------------------------------------------------------------------------


def test_complete_graph_when_the_degree_allows():
    people = [f"a{i}" for i in range(5)]
    for degree in (None, 4, 10):
        graph = neighbours(people, effective_degree(5, degree), b"s" * 16)
        assert all(graph[a] == set(people) - {a} for a in people)


@pytest.mark.parametrize(("n", "k"), [(7, 2), (12, 4), (30, 6), (101, 10)])
def test_harary_graph_is_k_regular_symmetric_and_connected(n, k):
    people = [f"agent-{i:03d}" for i in range(n)]
    graph = neighbours(people, k, bytes(16))
    assert all(len(graph[a]) == k and a not in graph[a] for a in people)
    assert all(a in graph[b] for a in people for b in graph[a])
    assert connected(people, graph)
    assert neighbours(people, k, bytes(16)) == graph  # portable: the seed alone decides
    assert neighbours(people, k, b"\x01" * 16) != graph


def test_graph_refuses_odd_degrees_and_finds_disconnected_survivors():
    with pytest.raises(ValueError, match="even"):
        effective_degree(10, 3)
    people = [f"a{i}" for i in range(8)]
    graph = neighbours(people, 2, bytes(16))  # a ring
    a = people[0]
    left, right = sorted(graph[a])
    assert connected([a, left], graph)
    assert not connected([left, right], graph)  # the ring without a is a path; these two are apart
