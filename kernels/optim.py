"""Optimiser updates as one pass over a parameter, where NumPy takes ten (and a GPU ten
launches). The update itself is scalar code compiled for both targets (kernels/optim_cuda.py)."""

import math

from numba import njit, prange

from . import CPU_KERNEL


@njit(inline="always", cache=True)
def adam_update(p, g, m, v, b1, c1, b2, c2, eps, weight_decay, step_size, bc2_sqrt):
    """One torch.optim.Adam update of one element: the new (p, m, v), with c1 = 1 - b1,
    c2 = 1 - b2 and the bias corrections step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t).
    Arithmetic in the arguments' dtype (the caller passes its scalars in it)."""
    g = g + weight_decay * p
    m = b1 * m + c1 * g
    v = b2 * v + c2 * g * g
    return p - step_size * m / (math.sqrt(v) / bc2_sqrt + eps), m, v


@njit(**CPU_KERNEL, error_model="numpy")  # eps = 0 and v = 0 divide by zero: NaN, as PyTorch
def adam_step(param, grad, m, v, b1, c1, b2, c2, eps, weight_decay, step_size, bc2_sqrt):
    """:func:`adam_update` in place on every element of a parameter.

    Layout: flat (size,) arrays of one dtype, the scalars already in it (float32 arithmetic
    for float32 parameters, as PyTorch's). Loop order: elements in parallel; each thread owns
    its elements of param, m and v.
    """
    for i in prange(param.size):
        param[i], m[i], v[i] = adam_update(param[i], grad[i], m[i], v[i], b1, c1, b2, c2, eps,
                                           weight_decay, step_size, bc2_sqrt)
