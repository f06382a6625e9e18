"""fastconv: hand-written Numba convolution and pooling kernels behind one dispatcher."""

from . import cpu, ops, reference  # noqa: F401  (reference and cpu register their kernels)
from .dispatch import algorithms, autotune
from .runtime import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["ops", "algorithms", "autotune", "set_num_threads", "get_num_threads", "__version__"]
