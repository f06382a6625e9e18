"""The oracle can fail: a result off by more than the tolerance, or a cell left unwritten,
fails against each of its two sources."""

import numpy as np
import pytest

import oracle
from oracle import random


@pytest.mark.parametrize("source", ["reference", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_fails_a_wrong_or_unwritten_result(source, dtype):
    rng = np.random.default_rng(0)
    x, w, gy = (random(rng, s, dtype) for s in ((1, 2, 5, 5), (3, 2, 3, 3), (1, 3, 3, 3)))
    expected = oracle.conv2d(x, w, gy=gy, activation="relu")
    right = {name: a.astype(dtype) for name, a in expected[source].items()}
    oracle.check(right, expected)
    for name in right:
        wrong = dict(right)
        wrong[name] = right[name] * (1 + 10 * oracle.tolerance(dtype))
        with pytest.raises(AssertionError, match=name):
            oracle.check(wrong, expected)
        unwritten = right[name].copy()
        unwritten.flat[0] = np.nan
        with pytest.raises(AssertionError, match=name):
            oracle.check({name: unwritten}, expected)


def test_pool_sources_agree_and_tell_max_from_avg():
    x = oracle.tie_free(np.random.default_rng(1), (2, 2, 6, 6))
    gy = random(np.random.default_rng(2), (2, 2, 3, 3))
    for kind in ("max", "avg"):
        expected = oracle.pool2d(kind, x, gy, kernel_size=2)
        oracle.check(expected["torch"], expected)
    with pytest.raises(AssertionError):
        oracle.check(oracle.pool2d("max", x, gy, kernel_size=2)["torch"],
                     oracle.pool2d("avg", x, gy, kernel_size=2))
