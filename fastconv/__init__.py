"""fastconv: hand-written Numba convolution and pooling kernels behind one dispatcher, and a
small autograd to train CNNs on them."""

from . import models, nn, ops, optim
from .dispatch import algorithms, autotune
from .rng import manual_seed
from .runtime import get_num_threads, set_num_threads
from .tensor import Tensor, is_grad_enabled, no_grad, tensor

__version__ = "0.1.0"
__all__ = ["ops", "nn", "optim", "models", "Tensor", "tensor", "no_grad", "is_grad_enabled",
           "manual_seed", "algorithms", "autotune", "set_num_threads", "get_num_threads",
           "__version__"]
