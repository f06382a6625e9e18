"""Optimiser updates as one pass over a parameter, where NumPy takes ten (and a GPU ten
launches)."""

import math

from numba import njit, prange


@njit(parallel=True, cache=True)
def adam_step(param, grad, m, v, b1, c1, b2, c2, eps, weight_decay, step_size, bc2_sqrt):
    """One torch.optim.Adam update in place, c1 = 1 - b1, c2 = 1 - b2, with the bias
    corrections step_size = lr / (1 - b1^t) and bc2_sqrt = sqrt(1 - b2^t):
    g = grad + weight_decay * param; m = b1 m + c1 g; v = b2 v + c2 g^2;
    param -= step_size * m / (sqrt(v) / bc2_sqrt + eps).

    Layout: flat (size,) arrays of one dtype, the scalars already in it (float32 arithmetic
    for float32 parameters, as PyTorch's). Loop order: elements in parallel; each thread owns
    its elements of param, m and v.
    """
    for i in prange(param.size):
        g = grad[i] + weight_decay * param[i]
        m[i] = b1 * m[i] + c1 * g
        v[i] = b2 * v[i] + c2 * g * g
        param[i] -= step_size * m[i] / (math.sqrt(v[i]) / bc2_sqrt + eps)
