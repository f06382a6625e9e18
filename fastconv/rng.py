"""fastconv's one random generator: layers initialise their parameters from it and dropout
draws its masks' seeds from it, so ``fastconv.manual_seed`` makes a run reproducible."""

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator (as ``torch.manual_seed``)."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator


def seed() -> int:
    """A fresh 63-bit seed for a kernel's counter-based random numbers."""
    return int(_generator.integers(0, 2**63))
