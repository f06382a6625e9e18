"""The optimiser steps: one kernel per parameter on either device, in place on arrays the ops
layer has checked (C-contiguous, writeable, one dtype, the scalars in it)."""

from ..kernels import optim
from ..registry import register
from . import driver
from .driver import lazy

optim_cuda = lazy("fastconv.kernels.optim_cuda")


def _flat(*arrays):
    return [a.reshape(-1) for a in arrays]  # views: the arrays are contiguous


@register("adam_step", "cpu", "numba")
def adam_step_cpu(param, grad, m, v, scalars):
    driver.cpu_call(optim.adam_step, param.size, *_flat(param, grad, m, v), *scalars)


@register("adam_step", "cuda", "numba", launches=("optim_cuda.adam_step",))
def adam_step_cuda(param, grad, m, v, scalars):
    optim_cuda.launch_adam_step(*_flat(param, grad, m, v), *scalars, stream=driver.gpu.stream())
