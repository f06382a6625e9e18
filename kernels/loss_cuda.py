"""Softmax cross-entropy on the GPU: the CUDA twin of kernels/loss.py, with its row maths
(compiled from there), its float64 sums and its arguments, in one launch.

The loss is a mean over the whole batch, so one block computes it all: its threads stride over
the rows, each writing its rows' gradient and summing their losses in float64, and a tree
reduction through shared memory (cuda_device.block_sum) adds the threads' sums in a fixed
order. One launch, no atomics, and the same loss for the same logits on every run.
"""

from numba import float64

from . import loss as loss_cpu
from .cuda_device import block_sum, cuda, device_function, kernel, launch

# Threads of the one block. A batch of up to THREADS rows takes one row a thread; a larger
# one loops. A constant, so the shared array of block_sum is sized at compile time; 256 (a
# power of two, as block_sum needs) covers the usual training batch without leaving most of
# a larger block idle in the reduction.
THREADS = 256
softmax_cross_entropy_row = device_function(loss_cpu.softmax_cross_entropy_row)


@kernel(2, "index1", 2, 1)
def softmax_cross_entropy(logits, labels, grad, loss):
    """kernels/loss.softmax_cross_entropy, same layout and arguments, launched as one block of
    THREADS threads. Thread t owns rows t, t + THREADS, ...: their grad rows, and the float64
    sum of their losses; after the block's reduction (its shared-memory phases named in
    block_sum) thread 0 writes loss[0], the mean. A row is read along its classes by one
    thread: meant for the class counts of image classifiers (tens to thousands), where a
    warp's rows lie in a few cache lines."""
    shared = cuda.shared.array(THREADS, float64)
    n_ = logits.shape[0]
    total = 0.0
    for n in range(cuda.threadIdx.x, n_, cuda.blockDim.x):
        total += softmax_cross_entropy_row(logits, labels, grad, n)
    total = block_sum(total, shared)
    if cuda.threadIdx.x == 0:
        loss[0] = total / n_


def launch_softmax_cross_entropy(logits, labels, grad, loss, stream=0):
    launch(softmax_cross_entropy, 1, THREADS, stream, logits, labels, grad, loss)
