"""The torch adapter's own overhead: a small fastconv.torch call against the fastconv.ops call
it wraps, on the same data, with and without autograd, and through the custom op itself.

    python benchmarks/torch_adapter.py [--threads 2] [--calls 3000] [--runs 5]

The shape is small (x 1x1x8x8, w 2x1x3x3) so that the kernel is a small part of a call; each
figure is the best of ``--runs`` runs of ``--calls`` calls after 200 warm-up calls, all in one
process. Prints a markdown table for benchmarks/results/torch_adapter.md, with the machine.
"""

import argparse  # noqa: I001 (fastconv before torch: OMP_WAIT_POLICY, see fastconv.torch)
import time

import fastconv.torch as ft
from fastconv import machine, ops, runtime

import torch


def per_call(call, calls, runs):
    """Best time of one call in microseconds."""
    for _ in range(200):
        call()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="fastconv's and torch's threads")
    parser.add_argument("--calls", type=int, default=3000, help="calls per timed run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; the best is reported")
    args = parser.parse_args(argv)
    runtime.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, w = torch.randn(1, 1, 8, 8), torch.randn(2, 1, 3, 3)
    x_grad, w_grad = x.clone().requires_grad_(), w.clone().requires_grad_()
    x_array, w_array = x.numpy(), w.numpy()
    geometry = ([1, 1], [0, 0, 0, 0], [1, 1], 1)

    def no_grad(call):
        def run():
            with torch.no_grad():
                call()
        return run

    calls = [
        ("`fastconv.ops.conv2d` on NumPy arrays", lambda: ops.conv2d(x_array, w_array)),
        ("`fastconv.torch.conv2d` under `torch.no_grad()`", no_grad(lambda: ft.conv2d(x, w))),
        ("`fastconv.torch.conv2d`, input requires grad", lambda: ft.conv2d(x_grad, w)),
        ("`fastconv.torch.conv2d`, input and weight require grad",
         lambda: ft.conv2d(x_grad, w_grad)),
        ("`torch.ops.fastconv.conv2d` (the custom op, what compile and export trace), "
         "input and weight require grad", lambda: torch.ops.fastconv.conv2d(
             x_grad, w_grad, None, *geometry)),
        ("`torch.nn.functional.conv2d` on the same tensors, for scale",
         lambda: torch.nn.functional.conv2d(x_grad, w_grad)),
    ]
    times = [(name, per_call(call, args.calls, args.runs)) for name, call in calls]
    base = times[0][1]
    for label, text in machine.describe(machine.machine()):
        print(f"- {label}: {text}")
    print(f"\n{args.threads} threads, float32, x 1x1x8x8, w 2x1x3x3, best of {args.runs} runs "
          f"of {args.calls} calls after 200 warm-up calls\n")
    print("| call | time per call | over `fastconv.ops.conv2d` |\n| --- | --: | --: |")
    for i, (name, us) in enumerate(times):
        over = "" if i in (0, len(times) - 1) else f"+{us - base:.1f} us"
        print(f"| {name} | {us:.1f} us | {over} |")


if __name__ == "__main__":
    main()
