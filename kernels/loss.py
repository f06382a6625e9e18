"""Softmax cross-entropy with its gradient in one pass over the logits, where NumPy takes ~15
(log_softmax, the gather of the labels' entries, the mean, and their backward). The per-row
maths is written once, here, and compiled for the GPU by kernels/loss_cuda.py.

Sums are kept in float64 whatever the logits' dtype, as kernels/bias.py does and for its
reason: a row's sum of exponentials runs over every class (tens of thousands for a vocabulary)
and the loss is a sum over the whole batch; each is one float64 add a term, in a loop whose
cost is the exponentials. Per element the arithmetic stays in the logits' dtype, but for the
label's gradient (:func:`softmax_cross_entropy_row` says why).

Non-finite logits give what PyTorch's CPU ``cross_entropy`` gives (tests/test_loss.py): a NaN,
a +inf, or -inf everywhere in a row (the max is then infinite and x - max is inf - inf) makes
the row's loss and gradient NaN; -inf on some classes only gives them probability 0 (gradient
0, or -1/N at the label, whose loss is then +inf). A non-finite row loss makes the mean so.
One difference, from the float64 sums: where float32 row losses are finite but their sum is
not (past 3.4e38, from logits ~1e38 apart), PyTorch's float32 mean is +inf and this one the
finite mean.
"""

import math

import numpy as np
from numba import njit, prange

from . import CPU_KERNEL


@njit(inline="always", cache=True)
def softmax_cross_entropy_row(logits, labels, grad, n):
    """Row n of an (N, C) batch: writes grad[n, :] = (softmax(logits[n]) - onehot(labels[n]))
    / N and returns the row's loss, log-sum-exp(logits[n]) - logits[n, labels[n]], in float64.

    Three passes over the row: its max m (NaN needs no care here: exp(NaN - m) makes the sum
    NaN), e = exp(x - m) into grad with their sum s in float64, then grad scaled by 1 / (s N).
    The exponentials and that scaling are in the logits' dtype; the label's gradient, p - 1
    = (e[label] - s) / s, and the loss m + log(s) - x[label] are in float64: p - 1 in the
    logits' dtype cancels where p nears 1 (a well-classified row), leaving float32 a few
    digits.
    """
    c_ = logits.shape[1]
    to = grad.dtype.type
    m = logits[n, 0]
    for c in range(1, c_):
        if logits[n, c] > m:
            m = logits[n, c]
    total = 0.0
    for c in range(c_):
        e = math.exp(logits[n, c] - m)
        grad[n, c] = e
        total += e
    inv_n = 1.0 / logits.shape[0]
    label = labels[n]
    e_label = grad[n, label]
    scale = to(inv_n / total)
    for c in range(c_):
        grad[n, c] *= scale
    grad[n, label] = to((e_label - total) * (inv_n / total))
    return np.float64(m) + math.log(total) - np.float64(logits[n, label])


@njit(**CPU_KERNEL)
def softmax_cross_entropy(logits, labels, grad, loss):
    """loss[0] = mean over rows n of (log-sum-exp(logits[n]) - logits[n, labels[n]]), and
    grad = d loss / d logits = (softmax(logits) - onehot(labels)) / N: PyTorch's
    ``cross_entropy(logits, labels)`` (mean reduction) and its gradient.

    Layout: logits and grad (N, C) C-contiguous, one dtype; labels (N,) int64 in [0, C);
    loss (1,) of the logits' dtype. N >= 1 (the ops layer answers N = 0 itself).
    Loop order: rows n (parallel), then the row's classes (:func:`softmax_cross_entropy_row`).
    Each thread owns whole rows: grad[n, :] and its row loss; then, in the calling thread, the
    row losses summed in float64 in row order (the same result for any number of threads) and
    their mean written to loss[0].
    """
    n_ = logits.shape[0]
    rows = np.empty(n_, np.float64)
    for n in prange(n_):
        rows[n] = softmax_cross_entropy_row(logits, labels, grad, n)
    total = 0.0
    for n in range(n_):
        total += rows[n]
    loss[0] = total / n_
