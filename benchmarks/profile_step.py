"""Where a training step's time goes, on the CPU: each of fastconv's ops (per call site in the
step, in order, or per op), and the rest (the autograd's element-wise work, the linear layers,
the loss, allocation), as the median over many steps. The model trains with its recipe's
optimiser (LeNet-5: Adam; a ResNet: SGD with momentum).

    python benchmarks/profile_step.py [--model resnet8] [--batch 64] [--threads 2] [--steps 200]

Every public function of fastconv.ops is wrapped in a timer for the run; the step is timed
whole. The wrappers cost a microsecond or two a call (about 30 calls a LeNet-5 step).
"""

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np

import fastconv
from fastconv import ops, tensor, train
from fastconv.nn import functional as F

TIMED = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
         "max_pool2d", "max_pool2d_backward_saved", "avg_pool2d", "avg_pool2d_backward",
         "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "batch_norm2d",
         "batch_norm2d_backward", "dropout", "dropout_backward", "adam_step")


def profile(batch, steps, model="lenet5", per_call=True):
    """{label: [seconds per step]} over ``steps`` steps after a warm-up, and the step totals;
    a label is an op's nth call in the step (``per_call``) or the op."""
    spent, order = defaultdict(float), []

    def timed(name, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                label = (f"{name} #{order.count(name) + 1}"
                         if per_call and name != "adam_step" else name)
                order.append(name)
                spent[label] += time.perf_counter() - start
        return call
    for name in TIMED:
        setattr(ops, name, timed(name, getattr(ops, name)))
    model, optimizer = train.build(train.RunConfig(model=model, **train.recipe(model)))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, batch)

    def step():
        loss = F.cross_entropy(model(tensor(x)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for _ in range(20):
        step()
    per_step, totals = defaultdict(list), []
    for _ in range(steps):
        spent.clear()
        order.clear()
        start = time.perf_counter()
        step()
        totals.append(time.perf_counter() - start)
        for label, seconds in spent.items():
            per_step[label].append(seconds)
    return per_step, totals


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=train.MODELS, default="lenet5",
                        help="the network (default: lenet5)")
    parser.add_argument("--per-op", action="store_true",
                        help="one row per op, not per call site (a ResNet's calls are many)")
    parser.add_argument("--batch", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--threads", type=int, help="fastconv's threads (default: Numba's)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps (default: 200)")
    args = parser.parse_args()
    if args.threads:
        fastconv.set_num_threads(args.threads)
    per_step, totals = profile(args.batch, args.steps, args.model, not args.per_op)
    step = statistics.median(totals)
    name = "LeNet-5" if args.model == "lenet5" else args.model
    print(f"{name} step, batch {args.batch}, {fastconv.get_num_threads()} threads: median "
          f"{step * 1e3:.2f} ms over {args.steps} steps ('#n': an op's nth call in the step; "
          "the backward runs the layers in reverse)")
    print("| call (in step order) | median ms | share |")
    print("|---|--:|--:|")
    accounted = 0.0
    for label, seconds in per_step.items():
        median = statistics.median(seconds)
        accounted += median
        print(f"| {label} | {median * 1e3:.3f} | {median / step:.0%} |")
    rest = step - accounted
    print(f"| the rest: autograd element-wise work, linear layers, loss, allocation | "
          f"{rest * 1e3:.3f} | {rest / step:.0%} |")


if __name__ == "__main__":
    main()
