"""Every CUDA kernel in one list, for the PTX compile sweep (and later the dispatcher).

Each row: (name, plain Python function, float32 signature, float64 signature). The signatures
take arrays of any layout (NHWC arrives as transposed views) and int64 geometry. Adding a
kernel touches its file and one line here.
"""

from numba import types

from . import cuda_conv, cuda_gemm, cuda_im2col, cuda_optim, cuda_pool

_i, _b = types.int64, types.boolean


def _arr(dtype, ndim):
    return types.Array(dtype, ndim, "A")


def _signatures(make):
    """make(dtype) -> a signature; the float32 and float64 instances."""
    return make(types.float32), make(types.float64)


def _conv_forward(t):
    return types.void(_arr(t, 4), _arr(t, 4), _arr(t, 1), _arr(t, 4), *[_i] * 8)


def _conv_backward(t):
    return types.void(_arr(t, 4), _arr(t, 4), _arr(t, 4), *[_i] * 7)


def _gemm(t):
    return types.void(_arr(t, 3), _arr(t, 3), _arr(t, 3), _arr(t, 1), _i)


def _bias_activation(t):
    return types.void(_arr(t, 3), _arr(t, 1), _i)


def _unfold(t):
    return types.void(_arr(t, 4), _arr(t, 4), *[_i] * 8)


def _bias_backward(t):
    return types.void(_arr(t, 4), _arr(t, 1))


def _max_forward(t):
    return types.void(_arr(t, 4), _arr(t, 4), *[_i] * 6)


def _max_backward(t):
    return types.void(_arr(t, 4), _arr(t, 4), _arr(t, 4), *[_i] * 6)


def _avg(t):
    return types.void(_arr(t, 4), _arr(t, 4), *[_i] * 8, _b)


def _adam(t):
    return types.void(*[_arr(t, 1)] * 4, *[t] * 8)


_KERNELS = [
    (cuda_conv.conv2d_forward_nchw, _conv_forward),
    (cuda_conv.conv2d_forward_nchw_tiled, _conv_forward),
    (cuda_conv.conv2d_forward_nhwc, _conv_forward),
    (cuda_conv.conv2d_backward_input, _conv_backward),
    (cuda_conv.conv2d_backward_weight, _conv_backward),
    (cuda_conv.conv2d_backward_bias, _bias_backward),
    (cuda_im2col.im2col, _unfold),
    (cuda_im2col.col2im, _unfold),
    (cuda_gemm.gemm, _gemm),
    (cuda_gemm.bias_activation, _bias_activation),
    (cuda_pool.max_pool2d_forward, _max_forward),
    (cuda_pool.max_pool2d_backward, _max_backward),
    (cuda_pool.avg_pool2d_forward, _avg),
    (cuda_pool.avg_pool2d_backward, _avg),
    (cuda_optim.adam_step, _adam),
]

KERNELS = [(k.py_func.__name__, k.py_func, *_signatures(make)) for k, make in _KERNELS]
