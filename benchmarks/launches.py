"""Count the CUDA kernel launches of one LeNet-5 training step on device="cuda", without a GPU.

    python benchmarks/launches.py [--batch 64] [--activation relu] [--pool max]

The step runs under Numba's CUDA simulator with every launch of a kernel the registry lists
(fastconv.registry.cuda_kernels) counted and skipped (the counts do not depend on the values,
and the simulator would take minutes to run them). Counted: the
launches of fastconv's kernels (forward, backward, epilogues, the Adam update). Not counted:
the element-wise work of the autograd layer and the loss, which on a GPU are CuPy launches of
their own.
"""

import os

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is first imported

import argparse  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402

import numpy as np  # noqa: E402

from fastconv import models, nn, optim, registry, tensor  # noqa: E402
from fastconv.nn import functional as F  # noqa: E402


class Counted:
    """A kernel whose launches are counted instead of run."""

    def __init__(self, name, counts):
        self.name, self.counts = name, counts

    def __getitem__(self, configuration):
        def launch(*args):
            self.counts[self.name] += 1
        return launch


def count_step(batch, activation, pool):
    counts = Counter()
    for name in registry.cuda_kernels():
        module, _, kernel = name.partition(".")
        setattr(sys.modules[f"fastconv.kernels.{module}"], kernel, Counted(kernel, counts))
    nn.manual_seed(0)
    model = models.LeNet5(activation=activation, pool=pool).to("cuda")
    optimizer = optim.Adam(model.parameters())
    x = np.random.default_rng(0).standard_normal((batch, 1, 32, 32)).astype(np.float32)
    loss = F.cross_entropy(model(tensor(x, device="cuda")), np.arange(batch) % 10)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--activation", default="relu", help="LeNet-5's (default: relu)")
    parser.add_argument("--pool", default="max", help="max or avg (default: max)")
    args = parser.parse_args()
    counts = count_step(args.batch, args.activation, args.pool)
    for name, n in counts.most_common():
        print(f"{n:4d}  {name}")
    print(f"{sum(counts.values()):4d}  fastconv kernel launches in one training step")


if __name__ == "__main__":
    main()
