"""Train a plain PyTorch LeNet-5 on Fashion-MNIST with its convolutions and pooling on fastconv's
kernels. fastconv.torch.convert swaps every nn.Conv2d and nn.MaxPool2d for fastconv's subclass
and keeps the parameters, so the optimiser, the loss and the loop stay PyTorch's.

    python examples/train_converted_lenet.py --epochs 2
    python examples/train_converted_lenet.py --epochs 2 --unconverted   # PyTorch's own layers

The images come from fastconv.data: normalised with the train set's mean and std and padded
from 28x28 to 32x32. Each epoch prints its time, the mean training loss and the test accuracy.

fastconv is imported before torch (README, "fastconv under PyTorch", says why), so
--unconverted runs PyTorch on fastconv's OpenMP runtime (workers spinning ~1 ms between ops;
PyTorch's own default is ~3 ms). PyTorch's own best time comes from
benchmarks/compare_training.py --framework torch, the same training in a process that imports
torch first.
"""

import time

# fastconv before torch: it starts the OpenMP runtime torch then shares; torch first would load
# its own, whose workers spin after each torch op on the cores fastconv's kernels need
# (benchmarks/results/torch_adapter.md; README, "fastconv under PyTorch").
import fastconv.torch as ft

# isort: split
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from training_options import training_options

import fastconv
from fastconv import data
from fastconv.runtime import cpu_count


class LeNet5(nn.Module):
    """LeNet-5 on 1x32x32 images, with fastconv.models.LeNet5's layers and parameter names.
    Pooling and ReLU are modules, not functional calls: convert() swaps modules, so a
    functional max_pool2d would stay PyTorch's."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.c1, self.c3, self.c5 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5), nn.Conv2d(16, 120, 5)
        self.f6, self.output = nn.Linear(120, 84), nn.Linear(84, num_classes)
        self.pool, self.relu = nn.MaxPool2d(2), nn.ReLU()

    def forward(self, x):
        x = self.pool(self.relu(self.c1(x)))
        x = self.pool(self.relu(self.c3(x)))
        x = self.relu(self.c5(x)).flatten(1)
        return self.output(self.relu(self.f6(x)))


def arguments(doc):
    """The options of this example, which examples/ddp_train.py extends."""
    parser = training_options(doc)
    parser.add_argument("--unconverted", action="store_true",
                        help="train the plain PyTorch model, PyTorch's own convolutions and "
                             "pooling, for comparison")
    parser.add_argument("--threads", type=int,
                        help="threads of PyTorch and of fastconv's kernels, per process "
                             "(default: the cores, shared among the processes)")
    return parser


def set_threads(threads, processes=1):
    """Give PyTorch and fastconv the same thread count: ``threads``, or this machine's cores
    divided among its ``processes`` (oversubscribed cores slow every process down)."""
    threads = threads or max(1, cpu_count() // processes)
    torch.set_num_threads(threads)
    fastconv.set_num_threads(threads)
    return threads


def load(args, processes=1):
    """Train and test batches of Fashion-MNIST; a training batch holds ``batch_size`` images
    for each of ``processes`` (it drops a last batch that would not split evenly)."""
    train_x, train_y = data.load_fashion_mnist("train", root=args.data)
    test_x, test_y = data.load_fashion_mnist("test", root=args.data)
    part = slice(args.limit)
    stats = data.pixel_stats(train_x[part])  # the test set is normalised as the train set
    train = data.Batches(train_x[part], train_y[part], args.batch_size * processes,
                         seed=args.seed, normalize=stats, drop_last=processes > 1)
    test = data.Batches(test_x[part], test_y[part], 1000, shuffle=False, normalize=stats)
    return train, test


def build(args):
    """LeNet-5 initialised from ``args.seed``, converted to fastconv unless ``--unconverted``."""
    torch.manual_seed(args.seed)
    return LeNet5() if args.unconverted else ft.convert(LeNet5())


def train_epoch(model, optimizer, batches, rank=0, processes=1):
    """One pass over ``batches`` with Adam steps; returns the mean loss of the images seen.

    With several processes each one takes every ``processes``-th image of a batch, starting at
    ``rank``: under DistributedDataParallel they then take the step of the whole batch.
    """
    device = next(model.parameters()).device
    model.train()
    total, count = 0.0, 0
    for x, y in tqdm(batches, desc=f"epoch {batches.epoch + 1}", unit="batch", leave=False,
                     disable=rank != 0):
        x, y = (torch.from_numpy(a[rank::processes]).to(device) for a in (x, y))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / count


def accuracy(model, batches):
    """Fraction of ``batches``' images whose predicted class is the label."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(torch.from_numpy(x).to(device)).argmax(1).cpu().numpy() == y).sum())
                   for x, y in batches)
    return hits / len(batches.images)


def main():
    args = arguments(__doc__).parse_args()
    threads = set_threads(args.threads)
    train, test = load(args)
    net = build(args)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    kind = "PyTorch (unconverted)" if args.unconverted else "fastconv (converted)"
    print(f"LeNet-5, {kind}: {len(train.images)} training images, batch {args.batch_size}, "
          f"{threads} threads")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        loss = train_epoch(net, optimizer, train)
        seconds = time.perf_counter() - start
        print(f"epoch {epoch}: {seconds:.1f} s, train loss {loss:.4f}, "
              f"test accuracy {accuracy(net, test):.4f}", flush=True)


if __name__ == "__main__":
    main()
