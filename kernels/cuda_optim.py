"""Optimiser updates on the GPU: the CUDA twin of kernels/optim.py, one launch per parameter
where CuPy's element-wise expressions take ten."""

import math

from .cuda_device import cuda, flat_grid, launch


@cuda.jit(cache=True)
def adam_step(param, grad, m, v, b1, c1, b2, c2, eps, weight_decay, step_size, bc2_sqrt):
    """kernels/optim.adam_step's update, same layout and arguments. Each thread owns one
    element of param, m and v (1-D grid over the flat arrays)."""
    i = cuda.grid(1)
    if i >= param.size:
        return
    g = grad[i] + weight_decay * param[i]
    m[i] = b1 * m[i] + c1 * g
    v[i] = b2 * v[i] + c2 * g * g
    param[i] -= step_size * m[i] / (math.sqrt(v[i]) / bc2_sqrt + eps)


def launch_adam_step(param, grad, m, v, *scalars, block=(256, 1), stream=0):
    grid, threads = flat_grid(param.size, block)
    launch(adam_step, grid, threads, stream, param, grad, m, v, *scalars)
