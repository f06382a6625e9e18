"""algo="auto" against PyTorch on layers the suite does not name: asymmetric windows, dilation,
batch 1, NHWC, grouped (RegNet) and odd sizes, forward and backward (input and weight
gradients in one call, ops.conv2d_backward as the autograd makes it), on each thread count;
or, with --nhwc, on the conv layers of the suite's networks run in NHWC (the suite runs them
in NCHW).

    python benchmarks/other_layers.py --threads 1,2 --repeats 9 > table.md
    python benchmarks/other_layers.py --nhwc resnet18,resnet50 --threads 2 > nhwc.md

Each figure is the median of ``--repeats`` calls after a warm-up call, fastconv and PyTorch
called in turn each round (a busy neighbour slows them alike); "vs torch" is PyTorch's median
over fastconv's (above 1: faster). An NHWC layer runs PyTorch on channels-last tensors, and
fastconv on NHWC arrays with HWIO filters. Every array starts on a cache line, as each
framework's own layers' outputs do. Every result is checked against PyTorch's first.
"""

import argparse
import statistics
import time

import numpy as np

import fastconv  # before torch: its OpenMP threads would spin between fastconv's kernels
from fastconv import bench, ops
from fastconv.implementations import driver
from fastconv.machine import describe, machine

# (name, x NCHW, w OIHW, keyword arguments as fastconv.ops.conv2d takes them)
LAYERS = (
    ("ENet 5x1 (asymmetric)", (8, 64, 64, 64), (64, 64, 5, 1), dict(padding=(2, 0))),
    ("ENet 1x5 (asymmetric)", (8, 64, 64, 64), (64, 64, 1, 5), dict(padding=(0, 2))),
    ("dilated 3x3, dilation 2 (DeepLab's ResNet layer4)", (8, 256, 28, 28), (256, 256, 3, 3),
     dict(padding=2, dilation=2)),
    ("ASPP 3x3, dilation 6", (4, 512, 33, 33), (256, 512, 3, 3), dict(padding=6, dilation=6)),
    ("resnet18 layer1.conv, batch 1", (1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ("resnet18 layer3.conv, batch 1", (1, 256, 14, 14), (256, 256, 3, 3), dict(padding=1)),
    ("resnet18 layer2.conv, NHWC", (8, 128, 28, 28), (128, 128, 3, 3),
     dict(padding=1, data_format="NHWC")),
    ("resnet18 layer2.0.conv1 (stride 2), NHWC", (8, 64, 56, 56), (128, 64, 3, 3),
     dict(stride=2, padding=1, data_format="NHWC")),
    ("resnet18 layer2.0.downsample (1x1, stride 2), NHWC", (8, 64, 56, 56), (128, 64, 1, 1),
     dict(stride=2, data_format="NHWC")),
    ("resnet50 layer2.conv1 (1x1), NHWC", (8, 512, 28, 28), (128, 512, 1, 1),
     dict(data_format="NHWC")),
    ("resnext50 layer1.conv2 (32 groups of 4), NHWC", (8, 128, 56, 56), (128, 4, 3, 3),
     dict(padding=1, groups=32, data_format="NHWC")),
    ("resnext50 layer2.conv2 (32 groups of 8), NHWC", (8, 256, 28, 28), (256, 8, 3, 3),
     dict(padding=1, groups=32, data_format="NHWC")),
    ("resnext50 layer2.0.conv2 (32 groups of 8, stride 2), NHWC", (8, 256, 56, 56),
     (256, 8, 3, 3), dict(stride=2, padding=1, groups=32, data_format="NHWC")),
    ("RegNetX 3x3, 8 groups of 16", (8, 128, 28, 28), (128, 16, 3, 3),
     dict(padding=1, groups=8)),
    ("odd: 5 -> 7 channels, 13x13, 3x3", (8, 5, 13, 13), (7, 5, 3, 3), dict(padding=1)),
    ("odd: 35 -> 35 channels, 27x27, 3x3", (8, 35, 27, 27), (35, 35, 3, 3), dict(padding=1)),
    ("odd: 17 -> 23, 31x29, 5x3, stride 2", (3, 17, 31, 29), (23, 17, 5, 3),
     dict(stride=2, padding=(2, 1))),
)


def nhwc_layers(networks):
    """LAYERS' rows for the conv2d layers of the suite's ``networks``, each in NHWC."""
    return [(f"{case.name}, NHWC", case.x, case.w,
             dict(stride=case.stride, padding=case.padding, groups=case.groups,
                  data_format="NHWC"))
            for network in networks for case in bench.cases(network) if case.op == "conv2d"]


def _pairs(value):
    return value if isinstance(value, tuple) else (value, value)


def _on_lines(a):
    """A copy of ``a`` starting on a cache line, as fastconv's own outputs and PyTorch's
    channels-last copies do (NumPy's large arrays start 16 bytes past one)."""
    out = driver.aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def calls(x, w, gy, kwargs):
    """{"fastconv": (forward, backward), "torch": (forward, backward)} on these arrays (NCHW
    and OIHW; laid out as the layer says for each framework)."""
    import torch
    nhwc = kwargs.get("data_format") == "NHWC"
    stride, padding = _pairs(kwargs.get("stride", 1)), _pairs(kwargs.get("padding", 0))
    dilation, groups = _pairs(kwargs.get("dilation", 1)), kwargs.get("groups", 1)
    fx, fw, fgy = ((_on_lines(x.transpose(0, 2, 3, 1)), _on_lines(w.transpose(2, 3, 1, 0)),
                    _on_lines(gy.transpose(0, 2, 3, 1))) if nhwc else (x, w, gy))
    memory = torch.channels_last if nhwc else torch.contiguous_format
    tx, tw, tgy = (torch.from_numpy(a).contiguous(memory_format=memory) for a in (x, w, gy))

    def fastconv_backward():  # both gradients in one call, as the autograd asks for them
        return ops.conv2d_backward(fgy, fx, fw, (True, True, False), **kwargs)[:2]

    def torch_backward():
        return torch.ops.aten.convolution_backward(tgy, tx, tw, None, stride, padding, dilation,
                                                   False, [0, 0], groups, [True, True, False])[:2]
    return {"fastconv": (lambda: ops.conv2d(fx, fw, **kwargs), fastconv_backward),
            "torch": (lambda: torch.nn.functional.conv2d(tx, tw, None, stride, padding,
                                                         dilation, groups), torch_backward)}, nhwc


def _nchw(a, nhwc, filters=False):
    a = np.asarray(a)
    if not nhwc:
        return a
    return a.transpose(3, 2, 0, 1) if filters else a.transpose(0, 3, 1, 2)


def check(pairs, nhwc):
    """The largest norm-relative difference between fastconv's and PyTorch's results."""
    y, (gx, gw) = pairs["fastconv"][0](), pairs["fastconv"][1]()
    ty, (tgx, tgw) = pairs["torch"][0](), pairs["torch"][1]()
    worst = 0.0
    for mine, theirs, filters in ((y, ty, False), (gx, tgx, False), (gw, tgw, True)):
        mine, theirs = _nchw(mine, nhwc, filters), theirs.numpy()
        worst = max(worst, float(np.linalg.norm(mine - theirs) / np.linalg.norm(theirs)))
    return worst


def medians(fns, repeats):
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts, each a table (default: 1,2)")
    parser.add_argument("--repeats", type=int, default=9,
                        help="timed rounds; each figure is their median (default: 9)")
    parser.add_argument("--nhwc", metavar="NETWORK[,NETWORK...]",
                        help="instead of the layers above, every conv layer of these networks "
                             f"of the layer suite ({', '.join(bench.SUITES)}), in NHWC")
    args = parser.parse_args()
    layers = LAYERS if args.nhwc is None else nhwc_layers(args.nhwc.split(","))
    import torch
    for label, text in describe(machine()):
        print(f"- {label}: {text}")
    bench.settle_memory()
    for threads in map(int, args.threads.split(",")):
        fastconv.set_num_threads(threads)
        torch.set_num_threads(threads)
        print(f"\n### {threads} thread(s)\n")
        print("| layer | x (NCHW) | w (OIHW) | forward ms: fastconv / torch | vs torch "
              "| backward ms: fastconv / torch | vs torch | error vs torch |")
        print("|---|---|---|--:|--:|--:|--:|--:|")
        ratios = []
        for name, x_shape, w_shape, kwargs in layers:
            rng = np.random.default_rng(0)
            x = _on_lines(rng.standard_normal(x_shape, np.float32))
            w = rng.standard_normal(w_shape, np.float32)
            y = ops.conv2d(x, w, **{k: v for k, v in kwargs.items() if k != "data_format"})
            gy = _on_lines(rng.standard_normal(y.shape, np.float32))
            pairs, nhwc = calls(x, w, gy, kwargs)
            error = check(pairs, nhwc)
            cells = []
            for i in range(2):
                t = medians({k: fns[i] for k, fns in pairs.items()}, args.repeats)
                ratios.append((i, t["torch"] / t["fastconv"]))
                cells += [f"{t['fastconv'] * 1e3:.3f} / {t['torch'] * 1e3:.3f}",
                          f"{t['torch'] / t['fastconv']:.2f}x"]
            print(f"| {name} | {'x'.join(map(str, x_shape))} | {'x'.join(map(str, w_shape))} | "
                  + " | ".join(cells) + f" | {error:.1e} |", flush=True)
        for i, op in enumerate(("forward", "backward")):
            values = [r for j, r in ratios if j == i]
            print(f"\n{op}: geomean {np.exp(np.mean(np.log(values))):.2f}x, lowest "
                  f"{min(values):.2f}x")


if __name__ == "__main__":
    main()
