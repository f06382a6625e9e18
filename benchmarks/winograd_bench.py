"""algo="winograd" (both variants) against the current algo="auto" choice and PyTorch on the
suite's 3x3 stride-1 layers (ResNet-18, ResNet-50, VGG-16) at batch 8: forward and input
gradient, on each thread count; and winograd's float32 error against float64 on those layers.

    python benchmarks/winograd_bench.py --threads 1,2 --repeats 5 > table.md

Each row's time is the minimum of ``--repeats`` calls, the implementations called in turn each
round (a busy neighbour slows them alike). GFLOP/s counts the direct method's FLOPs (2 x
multiply-adds) and "% SGEMM" is that over the machine's float32 GEMM rate through NumPy's BLAS
on the same threads (fastconv.bench.sgemm_gflops).
"""

import argparse
import time

import numpy as np

import fastconv  # before torch: its OpenMP threads would spin between fastconv's kernels
from fastconv import bench, ops
from fastconv.implementations import winograd
from fastconv.machine import describe, machine

IMPLS = ("winograd F(2x2)", "winograd F(4x4)", "auto", "torch")


def layers(batch):
    chosen = []
    for suite in ("resnet18", "resnet50", "vgg16"):
        for case in bench.cases(suite, batch=batch):
            if case.op == "conv2d" and case.w[2:] == (3, 3) and case.stride == 1:
                chosen.append(case)
    return chosen


def calls(case, x, w, gy):
    import torch
    tx, tw, tgy = (torch.from_numpy(a) for a in (x, w, gy))
    pad = case.padding

    def ours(algo, tile=None):
        def forward():
            if tile:
                winograd.TILE = tile
            return ops.conv2d(x, w, padding=pad, algo=algo)

        def backward():
            if tile:
                winograd.TILE = tile
            return ops.conv2d_backward_input(gy, w, x.shape, padding=pad, algo=algo)
        return forward, backward

    def torch_backward():
        return torch.ops.aten.convolution_backward(tgy, tx, tw, None, [1, 1], [pad, pad],
                                                   [1, 1], False, [0, 0], 1,
                                                   [True, False, False])[0]
    return {"winograd F(2x2)": ours("winograd", 2), "winograd F(4x4)": ours("winograd", 4),
            "auto": ours("auto"),
            "torch": (lambda: torch.nn.functional.conv2d(tx, tw, padding=pad), torch_backward)}


def best(fns, repeats):
    for fn in fns.values():
        fn()
    times = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts, each a table (default: 1,2)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds; a row keeps each implementation's fastest "
                             "(default: 5)")
    parser.add_argument("--batch", type=int, default=8, help="images a layer (default: 8)")
    parser.add_argument("--errors", action="store_true",
                        help="the float32 error table against float64 only, no timing")
    args = parser.parse_args()
    import torch
    if args.errors:
        return errors(args.batch)
    for label, text in describe(machine()):
        print(f"- {label}: {text}")
    for threads in map(int, args.threads.split(",")):
        fastconv.set_num_threads(threads)
        torch.set_num_threads(threads)
        sgemm = bench.sgemm_gflops()
        print(f"\n### {threads} thread(s), SGEMM {sgemm:.0f} GFLOP/s\n")
        print("| layer | op | " + " | ".join(f"{i} ms (GFLOP/s, % SGEMM)" for i in IMPLS) + " |")
        print("|---|---|" + "---|" * len(IMPLS))
        for case in layers(args.batch):
            rng = np.random.default_rng(0)
            x = rng.standard_normal(case.x, np.float32)
            w = rng.standard_normal(case.w, np.float32)
            gy = rng.standard_normal(case.y_shape, np.float32)
            flops = case.geometry().flops
            pairs = calls(case, x, w, gy)
            for i, op in enumerate(("forward", "backward input")):
                times = best({name: fns[i] for name, fns in pairs.items()}, args.repeats)
                rates = [flops / t / 1e9 for t in times.values()]
                cells = [f"{t * 1e3:.1f} ({r:.0f}, {100 * r / sgemm:.0f}%)"
                         for t, r in zip(times.values(), rates, strict=True)]
                print(f"| {case.name} | {op} | " + " | ".join(cells) + " |", flush=True)


def errors(batch):
    """Norm-relative error of float32 winograd (both variants) against float64, per layer."""
    print("| layer | F(2x2) forward | F(2x2) input grad | F(4x4) forward | F(4x4) input grad "
          "| float32 im2col forward |")
    print("|---|---|---|---|---|---|")
    for case in layers(batch):
        rng = np.random.default_rng(0)
        x, w = (rng.standard_normal(s, np.float32) for s in (case.x, case.w))
        gy = rng.standard_normal(case.y_shape, np.float32)
        x64, w64, gy64 = (a.astype(np.float64) for a in (x, w, gy))
        pad = case.padding
        y64 = ops.conv2d(x64, w64, padding=pad, algo="im2col")
        gx64 = ops.conv2d_backward_input(gy64, w64, x.shape, padding=pad, algo="im2col")

        def err(a, b):
            return f"{np.linalg.norm(a - b) / np.linalg.norm(b):.1e}"
        cells = []
        for tile in (2, 4):
            winograd.TILE = tile
            cells.append(err(ops.conv2d(x, w, padding=pad, algo="winograd"), y64))
            cells.append(err(ops.conv2d_backward_input(gy, w, x.shape, padding=pad,
                                                       algo="winograd"), gx64))
        cells.append(err(ops.conv2d(x, w, padding=pad, algo="im2col"), y64))
        print(f"| {case.name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
