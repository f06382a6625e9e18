"""fastconv's raw Numba kernels: pure compute on arrays the ops layer has validated.

Kernels take NCHW-indexed arrays (an NHWC array arrives as a transposed view) unless their name
says ``nhwc``, explicit integer geometry and preallocated outputs; they never validate. A CPU
kernel file and its CUDA twin share a name, the twin's ending in ``_cuda`` (conv_direct.py,
conv_direct_cuda.py); scalar code both targets run (the activation epilogue, the pooling
window, the Adam update) is written once, in the CPU file, and compiled for the GPU from there.
"""

from numba import config


def cuda_simulated() -> bool:
    """Whether Numba's CUDA simulator stands in for the GPU in this process: fastconv's one
    answer, from the switch (NUMBA_ENABLE_CUDASIM=1) numba reads once, when it is imported."""
    return bool(config.ENABLE_CUDASIM)
