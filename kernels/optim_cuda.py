"""Optimiser updates on the GPU: the CUDA twin of kernels/optim.py, one launch for the
parameters of a model where CuPy's element-wise expressions take ten a parameter (Adam), nine
(SGD with momentum and weight decay)."""

from . import optim
from .cuda_device import cuda, device_function, kernel, launch

adam_update = device_function(optim.adam_update)
sgd_update = device_function(optim.sgd_update)

# Tensors a launch updates. A kernel's parameters must fit in 4 KB (the limit before CUDA 12.1,
# and PTX ISA 8.1, raised it to 32 KB: still the portable one), and Numba passes every 1-D
# array as seven 8-byte fields (meminfo, parent, size, itemsize, data, shape, stride): 56
# bytes, tuples flattened. At 16 tensors the four tuples take 4 * 16 * 56 = 3,584 bytes, the
# 2-D chunk table 72 and the eight scalars 32 or 64: 3,688 bytes in float32, 3,720 in float64,
# as the sm_90 PTX declares them (457 .u64 and 8 scalar .params). ptxas, given that PTX as ISA
# 8.0, accepts up to 0x1100 bytes (18 tensors in float64) and refuses 19 ("uses too much
# parameter space"). A model with more tensors takes one launch per 16. SGD's three tuples take
# 2,688 bytes at 16; one count for both keeps one grouping (implementations/optim.py).
MAX_TENSORS = 16
# Threads of a block: a chunk's CHUNK elements, THREADS apart, are each thread's.
THREADS = 256


@kernel(*[f"flatx{MAX_TENSORS}"] * 4, "index2", *["scalar"] * 8)
def adam_step(params, grads, ms, vs, chunks, b1, c1, b2, c2, eps, weight_decay, step_size,
              bc2_sqrt):
    """kernels/optim.adam_step, same layout and arguments, at most MAX_TENSORS tensors. Each
    block owns one chunk (row blockIdx.x of the table: a 1-D grid of one block a row); its
    threads stride over the chunk's elements of param, m and v, blockDim.x apart. It indexes
    the tensors from the chunk's start where the CPU kernel takes views of the chunk: views
    cost 48 registers in float32 against 34 (ptxas, sm_90)."""
    c = cuda.blockIdx.x
    j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    param, grad, m, v = params[j], grads[j], ms[j], vs[j]
    for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
        param[i], m[i], v[i] = adam_update(param[i], grad[i], m[i], v[i], b1, c1, b2, c2, eps,
                                           weight_decay, step_size, bc2_sqrt)


def launch_adam_step(params, grads, ms, vs, chunks, *scalars, stream=0):
    launch(adam_step, chunks.shape[0], THREADS, stream, params, grads, ms, vs, chunks, *scalars)


@kernel(*[f"flatx{MAX_TENSORS}"] * 3, "index2", *["scalar"] * 4, "bool", "bool")
def sgd_step(params, grads, buffers, chunks, lr, momentum, undamped, weight_decay, nesterov,
             first):
    """kernels/optim.sgd_step, same layout and arguments, at most MAX_TENSORS tensors: a block
    a chunk, as :func:`adam_step`. Without momentum the buffers (params, standing in) are
    neither read for anything nor written."""
    c = cuda.blockIdx.x
    j, start, stop = chunks[c, 0], chunks[c, 1], chunks[c, 2]
    param, grad, buf = params[j], grads[j], buffers[j]
    for i in range(start + cuda.threadIdx.x, stop, cuda.blockDim.x):
        p, b = sgd_update(param[i], grad[i], buf[i], lr, momentum, undamped, weight_decay,
                          nesterov, first)
        param[i] = p
        if momentum != 0:
            buf[i] = b


def launch_sgd_step(params, grads, buffers, chunks, *scalars, stream=0):
    launch(sgd_step, chunks.shape[0], THREADS, stream, params, grads, buffers, chunks, *scalars)
