"""The optimiser steps, Adam's and SGD's: one kernel for a list of parameters on either device
(on the GPU one launch per optim_cuda.MAX_TENSORS of them), in place on arrays the ops layer
has checked (C-contiguous, writeable, one dtype, the scalars in it)."""

import functools

import numpy as np

from ..kernels import optim
from ..registry import register
from . import driver
from .driver import gpu, lazy

optim_cuda = lazy("fastconv.kernels.optim_cuda")


def _flat(arrays):
    return tuple(a.reshape(-1) for a in arrays)  # views: the arrays are contiguous


def chunks(xp, sizes):
    """The chunk table of tensors of ``sizes`` elements: int64 rows (tensor, start, stop)
    cutting each into pieces of at most kernels/optim.CHUNK elements, in order. It depends on
    the sizes alone, so it is kept per sizes and device (as driver.constant keeps its arrays)
    rather than built and copied to the GPU on every step."""
    return _chunks(xp, tuple(sizes), optim.CHUNK, None if xp is np else gpu.device_id())


@functools.lru_cache(maxsize=64)
def _chunks(xp, sizes, chunk, device_id):
    rows = [(j, start, min(start + chunk, size))
            for j, size in enumerate(sizes) for start in range(0, size, chunk)]
    return xp.asarray(np.array(rows, np.int64).reshape(-1, 3))


def _cpu_step(kernel, params, grads, states, scalars):
    """``kernel`` (a kernels/optim step) on the lists of tensors, in one call."""
    # Numba types a tuple of arrays as one UniTuple (which the kernel indexes at run time)
    # only if every array is of one type: a read-only gradient is copied.
    grads = [g if g.flags.writeable else g.copy() for g in grads]
    sizes = [p.size for p in params]
    driver.cpu_call(kernel, sum(sizes), *map(_flat, (params, grads, *states)),
                    chunks(np, sizes), *scalars)


def _cuda_step(launcher, params, grads, states, scalars):
    """``launcher`` (an optim_cuda step's) on the lists of tensors, one launch per
    optim_cuda.MAX_TENSORS of them: a launch's parameters must fit in 4 KB."""
    group = optim_cuda.MAX_TENSORS
    for first in range(0, len(params), group):
        part = slice(first, first + group)
        table = chunks(gpu.xp, [p.size for p in params[part]])
        if table.shape[0]:  # a launch of no blocks is an error
            launcher(*(_flat(a[part]) for a in (params, grads, *states)), table, *scalars,
                     stream=gpu.stream())


@register("adam_step", "cpu", "numba")
def adam_step_cpu(params, grads, ms, vs, scalars):
    _cpu_step(optim.adam_step, params, grads, (ms, vs), scalars)


@register("adam_step", "cuda", "numba", launches=("optim_cuda.adam_step",))
def adam_step_cuda(params, grads, ms, vs, scalars):
    _cuda_step(optim_cuda.launch_adam_step, params, grads, (ms, vs), scalars)


def _sgd_states(params, buffers):
    """SGD's buffers, or without momentum (None) the params standing in for them: the kernels
    then neither read them for anything nor write them."""
    return (params if buffers is None else buffers,)


@register("sgd_step", "cpu", "numba")
def sgd_step_cpu(params, grads, buffers, scalars):
    _cpu_step(optim.sgd_step, params, grads, _sgd_states(params, buffers), scalars)


@register("sgd_step", "cuda", "numba", launches=("optim_cuda.sgd_step",))
def sgd_step_cuda(params, grads, buffers, scalars):
    _cuda_step(optim_cuda.launch_sgd_step, params, grads, _sgd_states(params, buffers), scalars)
