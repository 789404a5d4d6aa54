"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

References:
    Shamir, "How to Share a Secret", CACM 1979: a secret is the constant term of a
    random polynomial of degree t - 1; any t points determine it, fewer reveal nothing.

The field is the smallest prime above 2^256 (tests/protocol/test_secagg_shamir.py
checks its primality), so every 32-byte string is a field element and a share is
33 bytes, big-endian. The holder of share ``x`` is the participant with index
``x`` (1-based position in the round's roster, docs/PROTOCOL.md §14); the
secret is the value at 0, so a share is never at 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from protocol.errors import RejectReason, WireError

PRIME = (1 << 256) + 297
SECRET_BYTES = 32
SHARE_BYTES = 33

#: ``random_bytes(n)``: n bytes from a cryptographic source (``os.urandom``, seeded in tests)
RandomBytes = Callable[[int], bytes]


def _field_element(random_bytes: RandomBytes) -> int:
    """Uniform in [0, PRIME): rejection sampling from 257-bit draws (accepts about half)."""
    while True:
        value = int.from_bytes(random_bytes(SHARE_BYTES), "big") & ((1 << 257) - 1)
        if value < PRIME:
            return value


def split(
    secret: bytes, threshold: int, holders: Iterable[int], random_bytes: RandomBytes
) -> dict[int, int]:
    """Shares of ``secret`` for the holders' indices: any ``threshold`` of them recover it.

    Raises:
        ValueError: for a secret that is not 32 bytes, a threshold below 1 or above the
            number of holders, or an index outside [1, PRIME).
    """
    xs = sorted(set(holders))
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} for {len(xs)} holders")
    if xs[0] < 1 or xs[-1] >= PRIME:
        raise ValueError("share indices must be in [1, PRIME)")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [_field_element(random_bytes) for _ in range(threshold - 1)]
    shares: dict[int, int] = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner: c_0 + x (c_1 + x (c_2 + ...))
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def reconstruct(shares: Mapping[int, int], threshold: int) -> bytes:
    """The secret from ``threshold`` shares (the lowest indices are used).

    Shares are unauthenticated: a wrong share gives a wrong secret, which the caller
    detects against a commitment or a public key.

    Raises:
        WireError: BAD_SHARE when fewer than ``threshold`` shares are given, or when
            they interpolate to a value that is not a 32-byte secret.
    """
    if threshold < 1 or len(shares) < threshold:
        raise WireError(RejectReason.BAD_SHARE, f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if j != i:  # the Lagrange basis polynomial l_i at 0: prod x_j / (x_j - x_i)
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise WireError(RejectReason.BAD_SHARE, "the shares interpolate outside 32-byte secrets")
    return secret.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(share: int) -> bytes:
    return share.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(raw: object, what: str) -> int:
    """A share as sent: 33 bytes, big-endian, below PRIME.

    Raises:
        WireError: BAD_SHARE otherwise.
    """
    if not isinstance(raw, bytes) or len(raw) != SHARE_BYTES:
        raise WireError(RejectReason.BAD_SHARE, f"{what}: a share is {SHARE_BYTES} bytes")
    value = int.from_bytes(raw, "big")
    if value >= PRIME:
        raise WireError(RejectReason.BAD_SHARE, f"{what}: share outside the field")
    return value
