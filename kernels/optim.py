"""Optimiser updates as one pass over all of a model's parameters, where NumPy takes ten passes
a parameter for Adam, nine for SGD with momentum and weight decay (and a GPU as many launches).
Each update rule is scalar code compiled for both targets (kernels/optim_cuda.py).

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


@njit(inline="always", cache=True)
def sgd_update(p, g, b, lr, momentum, undamped, weight_decay, nesterov, first):
    """One torch.optim.SGD update of one element: the new (p, b), b its momentum buffer, with
    undamped = 1 - dampening; ``first`` (the buffer's first step) takes b = d. Without momentum
    b comes back as it came and the caller does not store it. Arithmetic in the arguments'
    dtype, PyTorch's operations in its order (the weight decay only when it is not 0, as
    PyTorch's, so that an infinite p stays so)."""
    d = g + weight_decay * p if weight_decay != 0 else g
    if momentum != 0:
        b = d if first else momentum * b + undamped * d
        d = d + momentum * b if nesterov else b
    return p - lr * d, b


@njit(**CPU_KERNEL)
def sgd_step(params, grads, buffers, chunks, lr, momentum, undamped, weight_decay, nesterov,
             first):
    """:func:`sgd_update` in place on every element of every tensor of a list, their buffers
    all at their first step (``first``) or all past it.

    Layout as :func:`adam_step`'s, buffers the momentum buffers (without momentum they are
    neither read for anything nor written: the caller passes params in their place); the four
    scalars in the arrays' dtype, nesterov and first booleans. Loop order: chunks in parallel;
    each iteration owns its chunk's elements of param and buffer.
    """
    for c in prange(chunks.shape[0]):
        j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
        # views from 0, as adam_step's
        param, grad, buf = params[j][start:stop], grads[j][start:stop], buffers[j][start:stop]
        for i in range(param.size):
            p, b = sgd_update(param[i], grad[i], buf[i], lr, momentum, undamped, weight_decay,
                              nesterov, first)
            param[i] = p
            if momentum != 0:
                buf[i] = b
