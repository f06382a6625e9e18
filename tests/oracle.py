"""Test helpers shared by the op tests: random data, error measures, layout moves."""

import numpy as np


def random(rng, shape, dtype=np.float64):
    """Fresh standard-normal data, never zeros."""
    return rng.standard_normal(shape).astype(dtype)


def rel_error(actual, expected):
    """Norm-relative error, the measure every tolerance here is stated in."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.linalg.norm(expected), np.finfo(np.float64).tiny)
    return np.linalg.norm(actual - expected) / scale


def tolerance(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def to_nchw(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def from_nchw(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 2, 3, 1)
