"""The fixed-point ring: declared bounds that cannot overflow, unbiased rounding, exact decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.secagg.fixedpoint import (
    RingSpec,
    choose_frac_bits,
    decode_sum,
    encode_input,
    ring_length,
    signed,
)

SHAPES = {"w": (2, 3), "b": (3,)}


def delta_of(values: list[float]) -> dict[str, np.ndarray]:
    flat = np.asarray(values, dtype=np.float32)
    return {"w": flat[:6].reshape(2, 3), "b": flat[6:9]}


@pytest.mark.parametrize("bits", [32, 64])
def test_choose_frac_bits_is_the_largest_that_fits(bits):
    frac = choose_frac_bits(bits, clip=4.0, weight_max=500, max_agents=200)
    RingSpec(bits, frac, 4.0, 500, 200)
    with pytest.raises(ValueError, match=r"overflow|2\^52"):
        RingSpec(bits, frac + 1, 4.0, 500, 200)


def test_ring_spec_refuses_bounds_that_can_overflow():
    with pytest.raises(ValueError, match="overflow"):
        RingSpec(32, 20, clip=1.0, weight_max=1000, max_agents=100)
    with pytest.raises(ValueError, match="ring_bits"):
        RingSpec(16, 0, 1.0, 1, 1)
    with pytest.raises(ValueError, match="clip"):
        RingSpec(32, 0, math.inf, 1, 1)
    with pytest.raises(ValueError, match="do not fit"):
        choose_frac_bits(32, clip=1.0, weight_max=2**20, max_agents=2**12)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([32, 64]),
    agents=st.integers(1, 300),
    weight_max=st.integers(1, 5000),
    clip=st.floats(0.01, 100.0),
)
def test_worst_case_sum_never_wraps(bits, agents, weight_max, clip):
    # every agent at the clip with the largest weight, all the same sign: the decoded sum
    # still equals the true sum of the quantised inputs (no wrap-around mod 2^b)
    spec = RingSpec(bits, choose_frac_bits(bits, clip, weight_max, agents), clip, weight_max,
                    agents)
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0):
        x = encode_input(delta_of([sign * 10 * clip] * 9), weight_max, spec, rng)
        total = np.zeros_like(x)
        for _ in range(agents):
            np.add(total, x, out=total)
        expected = signed(x, spec).astype(object) * agents  # exact Python integers
        assert list(signed(total, spec)) == list(expected)


def test_encode_clips_weights_and_coordinates():
    spec = RingSpec(32, 8, clip=0.5, weight_max=10, max_agents=4)
    x = signed(encode_input(delta_of([2.0, -2.0, 0.25, 0, 0, 0, 0, 0, 0]), 99, spec,
                            np.random.default_rng(0)), spec)
    assert x[0] == 10  # the weight is capped at weight_max
    assert list(x[1:4]) == [10 * 0.5 * 256, -10 * 0.5 * 256, 10 * 0.25 * 256]  # exact: no rounding
    assert x.size == ring_length(SHAPES)


def test_stochastic_rounding_is_unbiased():
    spec = RingSpec(32, 0, clip=1.0, weight_max=1, max_agents=1)  # step 1: 0.3 -> 0 or 1
    rng = np.random.default_rng(1)
    ups = [signed(encode_input(delta_of([0.3] * 9), 1, spec, rng), spec)[1:] for _ in range(2000)]
    mean = np.mean(ups)
    assert set(np.unique(ups)) == {0, 1}
    assert abs(mean - 0.3) < 4 * math.sqrt(0.3 * 0.7 / (2000 * 9))


def test_decode_sum_is_the_weighted_mean():
    spec = RingSpec(64, 30, clip=1.0, weight_max=100, max_agents=3)
    rng = np.random.default_rng(2)
    deltas = [delta_of(list(rng.uniform(-0.9, 0.9, 9))) for _ in range(3)]
    weights = [10, 20, 70]
    total = np.zeros(ring_length(SHAPES), dtype=np.uint64)
    for d, w in zip(deltas, weights, strict=True):
        np.add(total, encode_input(d, w, spec, rng), out=total)
    out = decode_sum(total, spec, SHAPES)
    assert out.samples == 100
    for name, shape in SHAPES.items():
        expected = sum(w * d[name].astype(np.float64) for d, w in zip(deltas, weights,
                                                                       strict=True)) / 100
        np.testing.assert_allclose(out.delta[name], expected, atol=2 * 2.0**-30)
        assert out.delta[name].dtype == np.float32 and out.delta[name].shape == shape


def test_decode_sum_refuses_a_wrong_length_or_no_weight():
    spec = RingSpec(32, 4, 1.0, 10, 2)
    with pytest.raises(ValueError, match="ring elements"):
        decode_sum(np.zeros(3, dtype=np.uint32), spec, SHAPES)
    with pytest.raises(ValueError, match="weight"):
        decode_sum(np.zeros(ring_length(SHAPES), dtype=np.uint32), spec, SHAPES)


def test_encode_refuses_non_finite_deltas():
    spec = RingSpec(32, 4, 1.0, 10, 2)
    with pytest.raises(ValueError, match="NaN"):
        encode_input(delta_of([math.nan] * 9), 1, spec, np.random.default_rng(0))
