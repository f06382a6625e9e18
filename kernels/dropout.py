"""Dropout's masks from a counter-based generator: element i of a call with seed s is kept when
the SplitMix64 output for counter i from state s (Steele, Lea and Flood, OOPSLA 2014; the
seeding generator of java.util.SplittableRandom) has its top 32 bits at or above
``threshold = round(p * 2^32)``. A mask is a pure function of (seed, i): the CPU and the GPU draw
the same one, in any thread order, with no generator state to carry between threads.
"""

import numpy as np
from numba import njit, prange

from . import CPU_KERNEL

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
S30, S27, S31, S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)


@njit(inline="always", cache=True)
def kept(seed, i, threshold):
    """Whether element ``i`` survives: SplitMix64's output for counter i + 1 from state
    ``seed``, its top 32 bits compared with ``threshold`` (all unsigned: a signed operand
    would make Numba compare in float64)."""
    z = np.uint64(seed) + np.uint64(i + 1) * GOLDEN
    z = (z ^ (z >> S30)) * MIX1
    z = (z ^ (z >> S27)) * MIX2
    return ((z ^ (z >> S31)) >> S32) >= np.uint64(threshold)


@njit(**CPU_KERNEL)
def dropout_forward(x, seed, threshold, scale, y, mask):
    """mask[i] = :func:`kept` (seed, i, threshold); y[i] = x[i] * scale where kept, x[i] * 0
    elsewhere (so NaN and Inf stay NaN, as PyTorch's x * mask * scale).

    Layout: flat (size,) arrays, mask boolean. Loop order: elements in parallel; each thread
    owns its y[i] and mask[i].
    """
    zero = scale - scale  # 0 in scale's dtype (scale * 0 would be a float64)
    for i in prange(x.size):
        keep = kept(seed, i, threshold)
        mask[i] = keep
        y[i] = x[i] * (scale if keep else zero)


@njit(**CPU_KERNEL)
def dropout_backward(gy, mask, scale, gx):
    """gx[i] = gy[i] * scale where mask[i], gy[i] * 0 elsewhere: the forward's map again.

    Layout: flat (size,) arrays, mask boolean. Loop order: elements in parallel; each thread
    owns its gx[i].
    """
    zero = scale - scale  # 0 in scale's dtype (scale * 0 would be a float64)
    for i in prange(gy.size):
        gx[i] = gy[i] * (scale if mask[i] else zero)
