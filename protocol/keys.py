"""Ed25519 keys as values: 32 raw public bytes, PEM in and out, sign and verify.

``cryptography`` is imported only where a key is made or used, so ``protocol``
and an agent running unsigned import without it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NEEDS_CRYPTOGRAPHY = "signatures need the 'cryptography' package: pip install 'fedmq[secure]'"


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """An Ed25519 public key: 32 raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(self.raw)}")

    @classmethod
    def from_pem(cls, pem: bytes) -> VerifyKey:
        """Read a ``PUBLIC KEY`` PEM (SubjectPublicKeyInfo, as ``openssl pkey -pubout``).

        Raises:
            ValueError: if it is not an Ed25519 public key.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"not an Ed25519 public key but {type(key).__name__}")
        return cls(key.public_bytes_raw())

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def fingerprint(self) -> str:
        """A short name for logs: the first 16 hex digits of SHA-256(raw key)."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, sig: bytes, message: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(sig, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key. Its repr names only the public key's fingerprint."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public = VerifyKey(key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key for a 32-byte seed (RFC 8032's private key): fixed keys for test vectors."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """Read an unencrypted PKCS#8 ``PRIVATE KEY`` PEM (``openssl genpkey -algorithm ed25519``).

        Raises:
            ValueError: if it is not an Ed25519 private key.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"not an Ed25519 private key but {type(key).__name__}")
        return cls(key)

    def to_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.fingerprint})"
