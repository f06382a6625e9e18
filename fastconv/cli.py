"""The ``fastconv`` command: ``fastconv info`` and ``fastconv bench``; see ``fastconv -h``."""

import argparse
import csv
import json
import sys

import numpy as np

from . import bench, dispatch, runtime

BENCH_HELP = """\
Time every op (conv2d, max_pool2d, avg_pool2d, forward and backward) with every
implementation on the layers of a named network, and print one table row per op, shape and
implementation.

Implementations: each conv algorithm of fastconv.algorithms("cpu") and "auto" (pooling:
"fastconv", the ops); "numpy", the NumPy reference (algo "reference"); "torch", PyTorch's
torch.nn.functional on as many threads, when torch is installed. conv2d_backward is the input
and the weight gradient together; torch's backward is torch.autograd.grad, timed without the
forward.

Timing: one untimed warm-up call (it compiles the JIT kernels), then the median and the minimum
of --repeats calls (--numpy-repeats for the slow NumPy baseline). GFLOP/s counts 2 x
multiply-adds for convolutions (twice the forward's for conv2d_backward); pooling reports GB/s
read and written instead. "vs numpy" and "vs torch" are that baseline's median time divided by
the row's: above 1 means faster than the baseline.

Shape sets (NCHW, OIHW filters):
  lenet   C1 x 256x1x32x32 w 6x1x5x5; C3 x 256x6x14x14 w 16x6x5x5;
          S2 and S4: max and avg pooling 2x2, stride 2, on 256x6x28x28 and 256x16x10x10
  resnet  3x3 x 8x64x56x56 w 64x64x3x3 pad 1; 3x3s2 the same with w 128x64x3x3, stride 2;
          1x1 x 8x256x28x28 w 64x256x1x1
  all     both (default)

Example: fastconv bench --quick --shapes lenet --csv lenet.csv
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastconv", description="Numba convolution and pooling kernels: inspect the "
        "installation and benchmark it.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    info = commands.add_parser(
        "info", help="versions, devices, threads, BLAS, algorithms and autotuning",
        description="Print the versions, the devices found (CPU model and SIMD), the threads, "
        "the BLAS in use, the algorithms per device, the autotune cache path and whether "
        "autotuning is on.")
    info.set_defaults(command=_info)

    run = commands.add_parser(
        "bench", help="benchmark every op and algorithm against NumPy and PyTorch",
        description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.set_defaults(command=_bench, parser=run)
    run.add_argument("--shapes", choices=bench.SHAPES, default="all",
                     help="the shape set to run (default: all)")
    run.add_argument("--quick", action="store_true",
                     help="a smoke run in well under a minute: 3 repeats (1 for numpy) and "
                     f"every batch size divided by {bench.QUICK_BATCH_DIVISOR} (lenet 256 -> 32, "
                     "resnet 8 -> 1); --repeats, --numpy-repeats and --batch still override")
    run.add_argument("--batch", type=int, metavar="N",
                     help="set every shape's batch size to N (e.g. 2 for a test-sized run)")
    run.add_argument("--repeats", type=int, metavar="N",
                     help="timed calls per fastconv and torch measurement (default: 10, "
                     "--quick: 3)")
    run.add_argument("--numpy-repeats", type=int, metavar="N",
                     help="timed calls of the slow NumPy baseline (default: 3, --quick: 1)")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="the arrays' dtype (default: float32)")
    run.add_argument("--threads", type=int, metavar="N",
                     help="threads for fastconv, its BLAS and torch (fastconv.set_num_threads; "
                     "default: as many as Numba uses, NUMBA_NUM_THREADS)")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                     help="where to run (default: cpu; cuda is not in this build yet)")
    run.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    run.add_argument("--json", metavar="PATH",
                     help="also write the machine and the rows as JSON")
    run.add_argument("--markdown", metavar="PATH",
                     help="also write the header and the table as Markdown "
                     "(e.g. benchmarks/results/cpu.md)")
    run.add_argument("--plot", metavar="PATH",
                     help="also draw a PNG bar chart of the speed-ups over numpy (needs "
                     "matplotlib: pip install fastconv[plot])")
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    return args.command(args)


def _info(args) -> int:
    machine = bench.machine()
    about = dict(bench.describe(machine))
    print(f"fastconv {machine['versions']['fastconv']}")
    print(f"versions: {about['versions']}")
    print(f"devices:\n  cpu: {about['cpu']}\n  cuda: not available in this build")
    print(f"threads: {about['threads']}")
    print(f"BLAS: {about['BLAS']}")
    print(f"algorithms:\n  cpu: {', '.join(dispatch.algorithms('cpu'))}")
    print(f"autotune: {'on' if dispatch.autotuning() else 'off'} (cache: {dispatch.cache_path()})")
    return 0


def _bench(args) -> int:
    error = args.parser.error
    if args.device != "cpu":
        error(f"--device {args.device}: this build of fastconv has no CUDA backend yet; "
              "benchmark with --device cpu")
    for name in ("batch", "repeats", "numpy_repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            error(f"--{name.replace('_', '-')} must be at least 1")
    if args.plot:
        try:
            bench.check_plotting()
        except ImportError as err:
            error(str(err))
    if args.threads is not None:
        try:
            runtime.set_num_threads(args.threads)
        except ValueError as err:
            error(f"--threads: {err}")

    chosen = bench.cases(args.shapes, args.batch, args.quick)
    repeats = args.repeats or (3 if args.quick else 10)
    numpy_repeats = args.numpy_repeats or (1 if args.quick else 3)
    rows = bench.run(chosen, np.dtype(args.dtype), repeats, numpy_repeats)

    machine = bench.machine()
    print(bench.table(rows, machine), end="")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, bench.COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(bench.markdown(rows, machine))
    if args.plot:
        bench.plot(rows, machine, args.plot)
    for path in filter(None, (args.csv, args.json, args.markdown, args.plot)):
        print(f"wrote {path}", file=sys.stderr)
    return 0
