"""batch_norm2d forward and backward: every implementation on every device.

Each takes the layout and contiguous arrays the ops layer has checked (weight and bias present:
ones and zeros stand in for an affine-free normalisation), and returns new arrays; the forward
updates the running buffers in place when training with ``track``. Kernels index (N, C, P)
views of NCHW and NHWC arrays alike (:func:`driver.image_major`). "reference" is NumPy in
float64 (the tests' oracle).
"""

import numpy as np

from ..kernels import batch_norm
from ..kernels.activation import CODES
from ..registry import register
from . import driver
from .driver import lazy

batch_norm_cuda = lazy("fastconv.kernels.batch_norm_cuda")
gpu = driver.gpu


# --- reference ------------------------------------------------------------------------------------

def _channels_last(a, layout):
    """(N*P, C) float64 copy of an (N, C, P) view's cells, one row per (image, pixel)."""
    return np.asarray(driver.image_major(a, layout), np.float64).transpose(0, 2, 1).reshape(
        -1, a.shape[1 if layout == "NCHW" else 3])


def _from_channels_last(a, shape, layout):
    n = shape[0]
    planes = a.reshape(n, -1, a.shape[1]).transpose(0, 2, 1)  # (N, C, P)
    if layout == "NCHW":
        return np.ascontiguousarray(planes).reshape(shape)
    return np.ascontiguousarray(planes.transpose(0, 2, 1)).reshape(shape)


def _or(a, value):
    return value if a is None else np.float64(a)


_ACTIVATIONS = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
                "sigmoid": lambda v: 1 / (1 + np.exp(-v))}


@register("batch_norm2d", "cpu", "reference")
def batch_norm2d_reference(layout, x, weight, bias, running_mean, running_var, training, track,
                           momentum, eps, activation=None, residual=None):
    cells = _channels_last(x, layout)
    if training:
        mean, var = cells.mean(axis=0), cells.var(axis=0)
        if track:
            unbiased = var * len(cells) / (len(cells) - 1)
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean, var = np.float64(running_mean), np.float64(running_var)
    invstd = 1 / np.sqrt(var + eps)
    z = (cells - mean) * invstd * _or(weight, 1) + _or(bias, 0)
    if residual is not None:
        z = z + _channels_last(residual, layout)
    return _from_channels_last(_ACTIVATIONS[activation](z), x.shape, layout), mean, invstd


@register("batch_norm2d_backward", "cpu", "reference")
def batch_norm2d_backward_reference(layout, gy, x, weight, mean, invstd, training, y=None,
                                    activation=None, residual=False):
    g, cells = _channels_last(gy, layout), _channels_last(x, layout)
    if activation is not None:
        g = g * driver.SLOPES[activation](_channels_last(y, layout))
    gresidual = _from_channels_last(g, x.shape, layout)
    xhat = (cells - np.float64(mean)) * np.float64(invstd)
    gbias, gweight = g.sum(axis=0), (g * xhat).sum(axis=0)
    if training:
        g = g - g.mean(axis=0) - xhat * (g * xhat).mean(axis=0)
    gx = g * np.float64(invstd) * _or(weight, 1)
    gradients = _from_channels_last(gx, x.shape, layout), gweight, gbias
    return (*gradients, gresidual) if residual else gradients


# --- the kernels: kernels/batch_norm.py and its CUDA twin ---------------------------------------

def _forward(xp, call, layout, x, weight, bias, running_mean, running_var, training, track,
             momentum, eps, activation=None, residual=None):
    y = driver.empty(xp, x.shape, x.dtype)
    c = x.shape[1 if layout == "NCHW" else 3]
    weight, bias = _affine(xp, weight, c, x.dtype, 1.0), _affine(xp, bias, c, x.dtype, 0.0)
    mean, invstd = driver.empty(xp, c, x.dtype), driver.empty(xp, c, x.dtype)
    stand_in = mean  # for running buffers the kernel neither reads nor writes
    scalars = x.dtype.type(momentum), x.dtype.type(eps)
    call(driver.image_major(x, layout), weight, bias,
         stand_in if running_mean is None else running_mean,
         stand_in if running_var is None else running_var, training, track, *scalars,
         CODES[activation], driver.image_major(x if residual is None else residual, layout),
         residual is not None, driver.image_major(y, layout), mean, invstd)
    return y, mean, invstd


def _affine(xp, a, c, dtype, value):
    return driver.constant(xp, c, dtype, value) if a is None else a


def _backward(xp, call, layout, gy, x, weight, mean, invstd, training, y=None,
              activation=None, residual=False):
    """(gx, gweight, gbias), and with ``residual`` the residual's gradient: gy itself without
    an activation, else the kernel's g."""
    weight = _affine(xp, weight, mean.shape[0], x.dtype, 1.0)
    gx = driver.empty(xp, x.shape, x.dtype)
    gweight, gbias = driver.empty(xp, mean.shape, x.dtype), driver.empty(xp, mean.shape, x.dtype)
    keep = residual and activation is not None
    gresidual = driver.empty(xp, x.shape, x.dtype) if keep else gy
    planes = driver.image_major(gy, layout)
    call(planes, driver.image_major(x, layout),
         planes if activation is None else driver.image_major(y, layout),  # a stand-in y
         weight, mean, invstd, training, CODES[activation], driver.image_major(gx, layout),
         gweight, gbias, driver.image_major(gresidual, layout), keep)
    return (gx, gweight, gbias, gresidual) if residual else (gx, gweight, gbias)


@register("batch_norm2d", "cpu", "numba")
def batch_norm2d_cpu(layout, x, *args):
    return _forward(np, lambda *a: driver.cpu_move(batch_norm.batch_norm_forward, x.size, *a),
                    layout, x, *args)


@register("batch_norm2d", "cuda", "numba", launches=("batch_norm_cuda.batch_norm_forward",))
def batch_norm2d_cuda(layout, x, *args):
    return _forward(gpu.xp, lambda *a: batch_norm_cuda.launch_batch_norm_forward(
        *a, stream=gpu.stream()), layout, x, *args)


@register("batch_norm2d_backward", "cpu", "numba")
def batch_norm2d_backward_cpu(layout, gy, *args):
    return _backward(np, lambda *a: driver.cpu_move(batch_norm.batch_norm_backward, gy.size,
                                                    *a), layout, gy, *args)


@register("batch_norm2d_backward", "cuda", "numba",
          launches=("batch_norm_cuda.batch_norm_backward",))
def batch_norm2d_backward_cuda(layout, gy, *args):
    return _backward(gpu.xp, lambda *a: batch_norm_cuda.launch_batch_norm_backward(
        *a, stream=gpu.stream()), layout, gy, *args)
