"""matmul, the matrix product of the autograd's linear layers: every implementation on every
device, on 2-D float arrays of one dtype, any strides, that the ops layer has checked. On the
CPU it runs on fastconv's threads with BLAS single-threaded inside them (driver.matmul), so a
step's products do not wake a second pool of threads; on a GPU it is cuBLAS's, through CuPy.
"reference" is NumPy in float64."""

import numpy as np

from ..registry import register
from . import driver

gpu = driver.gpu


@register("matmul", "cpu", "reference")
def matmul_reference(a, b):
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


@register("matmul", "cpu", "numba")
def matmul_cpu(a, b):
    out = driver.empty(np, (a.shape[0], b.shape[1]), a.dtype)
    driver.matmul(a, b, out)
    return out


@register("matmul", "cuda", "cublas")
def matmul_cuda(a, b):
    out = driver.empty(gpu.xp, (a.shape[0], b.shape[1]), a.dtype)
    return gpu.xp.matmul(a, b, out=out)
