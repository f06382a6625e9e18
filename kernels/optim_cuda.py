"""Optimiser updates on the GPU: the CUDA twin of kernels/optim.py, one launch per parameter
where CuPy's element-wise expressions take ten."""

from . import optim
from .cuda_device import cuda, device_function, flat_grid, kernel, launch

adam_update = device_function(optim.adam_update)


@kernel(1, 1, 1, 1, *["scalar"] * 8)
def adam_step(param, grad, m, v, b1, c1, b2, c2, eps, weight_decay, step_size, bc2_sqrt):
    """kernels/optim.adam_step, same layout and arguments. Each thread owns one element of
    param, m and v (1-D grid over the flat arrays)."""
    i = cuda.grid(1)
    if i < param.size:
        param[i], m[i], v[i] = adam_update(param[i], grad[i], m[i], v[i], b1, c1, b2, c2, eps,
                                           weight_decay, step_size, bc2_sqrt)


def launch_adam_step(param, grad, m, v, *scalars, block=(256, 1), stream=0):
    grid, threads = flat_grid(param.size, block)
    launch(adam_step, grid, threads, stream, param, grad, m, v, *scalars)
