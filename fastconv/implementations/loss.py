"""softmax_cross_entropy, the loss and its gradient together: every implementation on every
device, on the arrays the ops layer has checked (logits (N, C) C-contiguous with N >= 1,
labels (N,) int64 in [0, C)), each returning (loss, grad): the mean loss as a 0-d array and
d loss / d logits. "reference" is NumPy in float64 (the tests' oracle)."""

import numpy as np

from ..kernels import loss
from ..registry import register
from . import driver
from .driver import lazy

loss_cuda = lazy("fastconv.kernels.loss_cuda")
gpu = driver.gpu


@register("softmax_cross_entropy", "cpu", "reference")
def softmax_cross_entropy_reference(logits, labels):
    x = np.asarray(logits, np.float64)
    rows = np.arange(len(x))
    m = x.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, as the kernels
        e = np.exp(x - m)
        s = e.sum(axis=1, keepdims=True)
        row_loss = (m + np.log(s))[:, 0] - x[rows, labels]
        grad = e / s
    grad[rows, labels] -= 1
    return np.asarray(row_loss.mean()), grad / len(x)


def _loss(xp, call, logits, labels):
    grad = driver.empty(xp, logits.shape, logits.dtype)
    mean = driver.empty(xp, (1,), logits.dtype)
    call(logits, labels, grad, mean)
    return mean.reshape(()), grad


@register("softmax_cross_entropy", "cpu", "numba")
def softmax_cross_entropy_cpu(logits, labels):
    return _loss(np, lambda *a: driver.cpu_call(loss.softmax_cross_entropy, logits.size, *a),
                 logits, labels)


@register("softmax_cross_entropy", "cuda", "numba",
          launches=("loss_cuda.softmax_cross_entropy",))
def softmax_cross_entropy_cuda(logits, labels):
    return _loss(gpu.xp, lambda *a: loss_cuda.launch_softmax_cross_entropy(
        *a, stream=gpu.stream()), logits, labels)
