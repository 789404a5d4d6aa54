"""Shamir sharing: any t shares recover the secret, t - 1 reveal nothing, bad shares are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import RejectReason, WireError
from protocol.secagg.shamir import (
    PRIME,
    SHARE_BYTES,
    reconstruct,
    share_from_bytes,
    share_to_bytes,
    split,
)


def _is_probable_prime(n: int) -> bool:
    """Miller-Rabin with the first 40 primes as bases: error below 4^-40."""
    bases = [p for p in range(2, 200) if all(p % q for q in range(2, p))][:40]
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_is_the_smallest_prime_above_2_to_256():
    assert _is_probable_prime(PRIME)
    assert not any(_is_probable_prime((1 << 256) + k) for k in range(1, 297, 2))


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 12),
    data=st.data(),
)
def test_any_t_shares_recover_the_secret(secret, n, data):
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    shares = split(secret, t, xs, np.random.default_rng(len(xs)).bytes)
    subset = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=t, max_size=n,
                                unique=True))
    assert reconstruct({x: shares[x] for x in subset}, t) == secret


def test_fewer_than_t_shares_are_refused_and_a_forged_one_gives_another_secret():
    secret = bytes(range(32))
    shares = split(secret, 3, [1, 2, 3, 4], np.random.default_rng(0).bytes)
    with pytest.raises(WireError) as exc:
        reconstruct({1: shares[1], 2: shares[2]}, 3)
    assert exc.value.reason is RejectReason.BAD_SHARE
    forged = {1: shares[1], 2: shares[2], 3: (shares[3] + 1) % PRIME}
    try:
        assert reconstruct(forged, 3) != secret
    except WireError as err:  # or it lands outside the 32-byte secrets
        assert err.reason is RejectReason.BAD_SHARE


def test_t_minus_1_shares_are_independent_of_the_secret():
    # With t = 2 one share is c0 + c1 * x for a uniform c1: uniform whatever the secret.
    # Two very different secrets give share distributions no test tells apart.
    rng = np.random.default_rng(3)
    tops = []
    for secret in (bytes(32), b"\xff" * 32):
        shares = [split(secret, 2, [1, 2], rng.bytes)[1] for _ in range(4000)]
        tops.append(np.bincount([s >> 253 for s in shares], minlength=8)[:8])  # top 3 bits
    observed = np.array(tops, dtype=float)
    expected = observed.sum(axis=0) * observed.sum(axis=1)[:, None] / observed.sum()
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 24.3  # 7 degrees of freedom, p = 0.001


def test_share_bytes_round_trip_and_bad_shares_are_refused():
    assert share_from_bytes(share_to_bytes(PRIME - 1), "s") == PRIME - 1
    for bad in (b"\x00" * 32, b"\x00" * 34, "text", share_to_bytes(PRIME), b"\xff" * SHARE_BYTES):
        with pytest.raises(WireError) as exc:
            share_from_bytes(bad, "s")
        assert exc.value.reason is RejectReason.BAD_SHARE


def test_split_refuses_misuse():
    rnd = np.random.default_rng(0).bytes
    with pytest.raises(ValueError, match="32 bytes"):
        split(b"short", 1, [1], rnd)
    with pytest.raises(ValueError, match="threshold"):
        split(bytes(32), 3, [1, 2], rnd)
    with pytest.raises(ValueError, match="indices"):
        split(bytes(32), 1, [0, 1], rnd)
