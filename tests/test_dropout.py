"""Dropout, tested through its mask: given the mask, the output and the gradient are exact; the
masks themselves are the reference's (the same hash in NumPy), keep 1 - p of the elements, do
not repeat across seeds or positions, and follow fastconv.manual_seed."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import nn, ops, tensor
from fastconv.implementations import dropout as implementation
from fastconv.nn import functional as F
from oracle import random


def _scaled(a, mask, p):
    scale = a.dtype.type(0 if p == 1 else 1 / (1 - p))
    return a * np.where(mask, scale, scale * 0)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=1, max_size=4),
       p=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1)),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**63 - 1))
def test_output_and_gradient_are_exact_given_the_mask(shape, p, dtype, seed):
    rng = np.random.default_rng(seed % 2**32)
    x, gy = random(rng, shape, dtype), random(rng, shape, dtype)
    before = x.copy()
    y, mask = ops.dropout(x, p, seed=seed)
    assert y.dtype == x.dtype and mask.dtype == np.bool_ and y.shape == mask.shape == x.shape
    np.testing.assert_array_equal(y, _scaled(x, mask, p))
    np.testing.assert_array_equal(ops.dropout_backward(gy, mask, p), _scaled(gy, mask, p))
    np.testing.assert_array_equal(x, before)
    if x.size:
        threshold = min(round(p * 2**32), 2**32)
        want_y, want_mask = implementation.dropout_reference(x, seed, threshold,
                                                             dtype(0 if p == 1 else 1 / (1 - p)))
        np.testing.assert_array_equal(mask, want_mask)
        np.testing.assert_array_equal(y, want_y)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_masks_keep_one_minus_p_and_do_not_repeat(p):
    """Over 10^6 elements the kept fraction lies within 5 standard deviations of 1 - p; pairs
    of neighbours are kept together (1 - p)^2 of the time; two seeds give masks that agree only
    as independent ones do."""
    x = np.ones(1_000_000, np.float32)
    _, a = ops.dropout(x, p, seed=1)
    _, b = ops.dropout(x, p, seed=2)
    q, n = 1 - p, x.size
    assert abs(a.mean() - q) < 5 * np.sqrt(q * p / n)
    assert abs((a[:-1] & a[1:]).mean() - q * q) < 5 * np.sqrt(q * q * (1 - q * q) / n)
    assert abs((a == b).mean() - (q * q + p * p)) < 0.005


def test_the_extremes_and_evaluation():
    x = random(np.random.default_rng(0), (3, 4))
    y, mask = ops.dropout(x, 1.0, seed=5)
    assert not mask.any() and not y.any()
    y, mask = ops.dropout(x, 0.0, seed=5)
    assert mask.all()
    np.testing.assert_array_equal(y, x)
    t = tensor(x)
    assert F.dropout(t, 0.5, training=False) is t
    layer = nn.Dropout(0.25).eval()
    assert layer(t) is t and layer.p == 0.25


def test_the_autograd_gradient_goes_through_the_mask():
    fastconv.manual_seed(7)
    x = tensor(random(np.random.default_rng(1), (4, 5)), requires_grad=True)
    y = nn.Dropout(0.4)(x)
    gy = random(np.random.default_rng(2), (4, 5))
    y.backward(gy)
    mask = y.numpy() != 0
    np.testing.assert_array_equal(x.grad.numpy(), _scaled(gy, mask, 0.4))
    np.testing.assert_array_equal(y.numpy(), _scaled(x.numpy(), mask, 0.4))


def test_manual_seed_makes_masks_reproducible():
    x = tensor(np.ones((50, 50), np.float32))
    runs = []
    for _ in range(2):
        fastconv.manual_seed(3)
        runs.append([F.dropout(x, 0.5).numpy() for _ in range(2)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[0][1])  # each call draws a new seed


@pytest.mark.parametrize("call, error, message", [
    (lambda: nn.Dropout(1.5), ValueError, r"p must lie in \[0, 1\], got 1.5"),
    (lambda: nn.Dropout(-0.1), ValueError, "p must lie in"),
    (lambda: F.dropout(tensor(np.ones(3)), 2.0), ValueError, "p must lie in"),
    (lambda: ops.dropout(np.ones(3), 0.5, seed=-1), ValueError, "seed must be an int"),
    (lambda: ops.dropout_backward(np.ones(3), np.ones(3), 0.5), TypeError, "boolean"),
    (lambda: ops.dropout_backward(np.ones(3), np.ones(2, bool), 0.5), ValueError,
     r"mask has shape \(2,\)"),
])
def test_bad_arguments_are_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
