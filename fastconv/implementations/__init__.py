"""Every op's implementations, one module per op family (conv2d, pooling, batch_norm, dropout,
optim, loss, matmul), each registering its NumPy reference, CPU and CUDA implementations side
by side with :mod:`fastconv.registry`; driver.py holds what they share."""

from . import batch_norm, conv2d, dropout, loss, matmul, optim, pooling, winograd  # noqa: F401  (they register)
