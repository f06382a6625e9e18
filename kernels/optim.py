"""Optimiser updates as one pass over all of a model's parameters, where NumPy takes ten passes
a parameter (and a GPU ten launches). The update itself is scalar code compiled for both
targets (kernels/optim_cuda.py).

The parameters arrive as tuples of flat arrays (the autograd hands each gradient over as its
own array), with a table of chunks cutting every tensor into pieces of at most CHUNK elements:
the units of parallel work, so that a model's one big tensor spreads over every thread (block,
on a GPU) and its many small ones do not each cost a parallel region (launch). This is
PyTorch's multi_tensor_apply.
"""

import math

from numba import njit, prange

from . import CPU_KERNEL

# Elements of a chunk. On a GPU a block of optim_cuda.THREADS = 256 threads does 16 each: few
# enough that LeNet-5's largest tensor (48,000 elements) spreads over 12 SMs, where a chunk of
# 64K (PyTorch's) would leave one block to walk it alone; many enough that a big model's chunks
# keep every SM busy. On the CPU an iteration over 4,096 elements of four arrays (64 KB of
# float32) costs far more than picking up its table row, and a 25M-parameter model still makes
# thousands of chunks to share out among the threads.
CHUNK = 1 << 12


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
def adam_step(params, grads, ms, vs, chunks, b1, c1, b2, c2, eps, weight_decay, step_size,
              bc2_sqrt):
    """:func:`adam_update` in place on every element of every tensor of a list, all at the
    same step.

    Layout: params, grads, ms and vs are tuples of flat (size,) arrays of one dtype, position j
    one tensor's; chunks is an int64 (count, 3) table of rows (j, start, stop), every element
    of every tensor in exactly one row, stop - start <= CHUNK; the scalars are in the arrays'
    dtype (float32 arithmetic for float32 parameters, as PyTorch's). Loop order: chunks in
    parallel; each iteration owns its chunk's elements of param, m and v.
    """
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        # the chunk as views indexed from 0, where LLVM sees no index can be negative and so
        # drops Numba's wraparound and vectorises: 10x faster than range(start, stop)
        param, grad = params[j][start:stop], grads[j][start:stop]
        m, v = ms[j][start:stop], vs[j][start:stop]
        for i in range(param.size):
            param[i], m[i], v[i] = adam_update(param[i], grad[i], m[i], v[i], b1, c1, b2, c2,
                                               eps, weight_decay, step_size, bc2_sqrt)
