"""The primitives SecAgg is built from: X25519, HKDF-SHA256, ChaCha20-Poly1305, AES-256-CTR.

References:
    Bonawitz et al., CCS 2017, §4: key agreement (here X25519, RFC 7748), a key
    derivation (HKDF, RFC 5869), authenticated encryption of the shares (here
    ChaCha20-Poly1305, RFC 8439) and a PRG expanding agreed seeds to masks (here
    the AES-256-CTR keystream, NIST SP 800-38A, read as little-endian integers).

Every derived key is bound to its purpose and to the session (job, run, round,
attempt) through HKDF's ``info``, so no key is ever used for two things and a
message of one session is useless in another. Each derived AEAD key encrypts
exactly one message, which is why the nonce may be fixed. ``cryptography`` is
imported only when a primitive runs: ``protocol`` still imports without it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.errors import RejectReason, WireError
from protocol.secagg.messages import Session
from protocol.secagg.shamir import RandomBytes

KEY_BYTES = 32
DOMAIN = b"fedmq/v1 secagg"
_NONCE12 = bytes(12)
_NONCE16 = bytes(16)


def info(label: str, fields: Sequence[str | int]) -> bytes:
    """HKDF's ``info`` (and the AEAD's associated data): NUL-joined, ids never hold NUL."""
    return b"\x00".join([DOMAIN, label.encode(), *(str(f).encode() for f in fields)])


class KeyPair:
    """An X25519 key pair: ``secret`` (raw 32 bytes, what Shamir shares when needed),
    ``public``, and :meth:`agree`, which reuses one parsed private key for every peer."""

    __slots__ = ("_key", "public", "secret")

    def __init__(self, secret: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self.secret = secret
        self._key = X25519PrivateKey.from_private_bytes(secret)
        self.public: bytes = self._key.public_key().public_bytes_raw()

    def agree(self, public: bytes) -> bytes:
        """X25519(secret, public): the same 32 bytes on both sides of a pair.

        Raises:
            WireError: BAD_KEY for a public key of low order (the all-zero shared secret).
        """
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        try:
            shared: bytes = self._key.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:
            raise WireError(RejectReason.BAD_KEY, f"X25519: {exc}") from None
        if shared == bytes(KEY_BYTES):  # RFC 7748 §6.1: refuse the all-zero output
            raise WireError(RejectReason.BAD_KEY, "X25519: low-order public key")
        return shared

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()[:16]})"


def keypair(random_bytes: RandomBytes) -> KeyPair:
    return KeyPair(random_bytes(KEY_BYTES))


def public_of(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    return KeyPair(secret).public


def agree(secret: bytes, public: bytes) -> bytes:
    """X25519(secret, public), for a single agreement (see :meth:`KeyPair.agree`).

    Raises:
        WireError: BAD_KEY for a public key of low order.
    """
    return KeyPair(secret).agree(public)


def derive(ikm: bytes, label: str, fields: Sequence[str | int]) -> bytes:
    """HKDF-SHA256(ikm, salt none, info(label, fields)) -> 32 bytes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), KEY_BYTES, None, info(label, fields)).derive(ikm)


def encrypt(key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 with a zero nonce: ``key`` is derived for this one message."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(key).encrypt(_NONCE12, plaintext, aad)


def decrypt(key: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    """Raises: WireError BAD_SHARE if the ciphertext or its associated data was altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE12, ciphertext, aad)
    except InvalidTag:
        raise WireError(RejectReason.BAD_SHARE, "encrypted share does not decrypt") from None


def prg(key: bytes, count: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``count`` ring elements: the AES-256-CTR keystream (zero IV) read little-endian."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    stream = Cipher(algorithms.AES(key), modes.CTR(_NONCE16)).encryptor()
    raw = stream.update(bytes(count * dtype.itemsize)) + stream.finalize()
    return np.frombuffer(raw, dtype=dtype)


def commitment(seed: bytes, fields: Sequence[str | int]) -> bytes:
    """SHA-256 over the domain, the session and the self-mask seed: hides a 32-byte
    random seed, and lets the coordinator check the seed it reconstructed."""
    return hashlib.sha256(info("commit", fields) + b"\x00" + seed).digest()


# --- the keys SecAgg derives, each bound to its session and purpose ----------------------


def pair_key(shared: bytes, session: Session, a: str, b: str) -> bytes:
    """The PRG key of the pairwise mask between ``a`` and ``b`` (order-free)."""
    lo, hi = sorted((a, b))
    return derive(shared, "pair", (*session.fields, lo, hi))


def self_key(seed: bytes, session: Session, agent: str) -> bytes:
    """The PRG key of ``agent``'s self mask."""
    return derive(seed, "self", (*session.fields, agent))


def share_key(shared: bytes, session: Session, sender: str, receiver: str) -> tuple[bytes, bytes]:
    """The AEAD key and associated data for the shares ``sender`` encrypts to ``receiver``."""
    fields = (*session.fields, sender, receiver)
    return derive(shared, "share", fields), info("share", fields)
