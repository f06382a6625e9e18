"""Batch normalisation over the batch and the pixels of each channel, forward and backward, in
PyTorch's arithmetic: the batch's mean and biased variance normalise in training and update the
running buffers (the variance unbiased), the running statistics normalise in evaluation.

The statistics of a float32 channel are summed in float64 (as PyTorch's CPU kernels do): a
sum over a batch's pixels, millions of terms, loses digits in float32, most where the mean is
large against the spread. They take one pass, of the deviations from a shift K, the channel's
first value (Chan, Golub and LeVeque's shifted data): var = E[(x-K)^2] - E[x-K]^2 cancels only
as far as K lies from the mean in units of the spread (a few at most, in float64: ~1e-14),
where E[x^2] - E[x]^2 cancels by (mean / spread)^2. Applying the statistics is arithmetic in
the arrays' dtype, with the per-channel coefficients rounded once.
"""

import math

import numpy as np
from numba import njit, prange

from . import CPU_KERNEL
from .activation import activate, slope


@njit(inline="always", cache=True)
def channel_sums(x, c, shift):
    """(sum of x[:, c] - shift, sum of its squares) over an (N, C, P) array, in float64."""
    total, squares = 0.0, 0.0
    for n in range(x.shape[0]):
        for p in range(x.shape[2]):
            d = x[n, c, p] - shift
            total += d
            squares += d * d
    return total, squares


@njit(inline="always", cache=True)
def moments(total, squares, shift, count):
    """(mean, biased variance) from :func:`channel_sums` over ``count`` cells."""
    mean_shifted = total / count
    return shift + mean_shifted, max(squares / count - mean_shifted * mean_shifted, 0.0)


@njit(inline="always", cache=True)
def running_update(running, c, momentum, value):
    """PyTorch's exponential average of a running buffer, in the buffer's dtype."""
    running[c] = (1 - momentum) * running[c] + momentum * value


@njit(**CPU_KERNEL)
def batch_norm_forward(x, weight, bias, running_mean, running_var, training, track, momentum,
                       eps, act, residual, add, y, mean, invstd):
    """y[n, c, p] = a((x[n, c, p] - mean[c]) * invstd[c] * weight[c] + bias[c] [+ residual[n,
    c, p]]), ``a`` the activation of code ``act`` (kernels/activation.py; 0: none), the
    residual added where ``add`` (a residual block's shortcut, summed before its ReLU).

    Layout: x, residual and y (N, C, P) views, P = H*W (NCHW's reshaped, NHWC's transposed;
    residual any such array where not ``add``); the rest (C,). ``training``: mean and invstd
    = 1/sqrt(var + eps) are the batch's (the biased variance), written to ``mean``/``invstd``,
    and with ``track`` the running buffers move ``momentum`` of the way to them (the variance
    unbiased); else they are the running ones.
    Loop order: c (parallel), then n, p: in training a pass summing the statistics, then one
    writing y. Each thread owns whole channels: mean[c], invstd[c], the running buffers' [c]
    and y[:, c].
    """
    n_, c_, p_ = x.shape
    count = n_ * p_
    for c in prange(c_):
        if training:
            shift = np.float64(x[0, c, 0])
            total, squares = channel_sums(x, c, shift)
            mu, var = moments(total, squares, shift, count)
            if track:
                running_update(running_mean, c, momentum, mu)
                running_update(running_var, c, momentum, var * count / max(count - 1, 1))
            mean[c], invstd[c] = mu, 1 / math.sqrt(var + eps)
        else:
            mean[c], invstd[c] = running_mean[c], 1 / math.sqrt(running_var[c] + eps)
        m, scale, b = mean[c], invstd[c] * weight[c], bias[c]
        if add:
            for n in range(n_):
                for p in range(p_):
                    y[n, c, p] = activate((x[n, c, p] - m) * scale + b + residual[n, c, p], act,
                                          y.dtype)
        else:
            for n in range(n_):
                for p in range(p_):
                    y[n, c, p] = activate((x[n, c, p] - m) * scale + b, act, y.dtype)


@njit(**CPU_KERNEL)
def batch_norm_backward(gy, x, y, weight, mean, invstd, training, act, gx, gweight, gbias,
                        gresidual, keep):
    """The gradients of :func:`batch_norm_forward` for the ``mean``/``invstd`` it used, with
    g = gy * a'(y) the gradient before its activation (``y`` its output; any array of the
    shape for act 0): gbias[c] = sum g[:, c], gweight[c] = sum g * xhat with xhat =
    (x - mean) * invstd, and gx = weight * invstd * (g - [gbias/M + xhat * gweight/M]), the
    bracket in training only (the statistics depend on x there), M = N*P. With ``keep``, g
    itself, the gradient of a residual added before the activation, goes to gresidual.

    Layout: gy, x, y, gx, gresidual (N, C, P) views (gresidual any such array where not
    ``keep``); the rest (C,). Loop order: c (parallel), then n, p: a pass for both sums
    (float64, writing gresidual), one writing gx. Each thread owns gweight[c], gbias[c],
    gx[:, c] and gresidual[:, c].
    """
    n_, c_, p_ = x.shape
    count = n_ * p_
    for c in prange(c_):
        m = mean[c]
        sum_gy, dot = 0.0, 0.0
        for n in range(n_):
            for p in range(p_):
                g = gy[n, c, p] * slope(y[n, c, p], act, gy.dtype)
                if keep:
                    gresidual[n, c, p] = g
                sum_gy += g
                dot += g * (x[n, c, p] - m)
        gbias[c], gweight[c] = sum_gy, dot * invstd[c]
        scale = weight[c] * invstd[c]
        if training:
            # gy - mean(gy) - (x - mean) * invstd^2 * mean(gy * (x - mean)), times the scale;
            # the per-cell arithmetic in gx's dtype (float64 halves the vector width)
            to = gx.dtype.type
            offset, tilt = to(sum_gy / count), to(dot * invstd[c] * invstd[c] / count)
            for n in range(n_):
                for p in range(p_):
                    g = gy[n, c, p] * slope(y[n, c, p], act, gy.dtype)
                    gx[n, c, p] = (g - offset - (x[n, c, p] - m) * tilt) * scale
        else:
            for n in range(n_):
                for p in range(p_):
                    gx[n, c, p] = gy[n, c, p] * slope(y[n, c, p], act, gy.dtype) * scale
