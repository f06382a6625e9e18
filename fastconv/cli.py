"""The ``fastconv`` command: ``info``, ``bench``, ``train`` and ``eval``; see ``fastconv -h``."""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from . import __version__, bench, device, dispatch, machine, ops, registry, runtime, train
from .kernels import gemm

BENCH_HELP = """\
Time every op (conv2d, conv_transpose2d, max_pool2d, avg_pool2d, batch_norm2d, forward and
backward) with every implementation on every distinct layer of real networks, and print one
table row per op, layer and implementation.

Suites (NCHW, every distinct conv and pooling layer, 224 x 224 images, batch 8):
  lenet5        C1, C3, C5 and the max and avg pools (32 x 32 images, batch 256)
  resnet18      the 7x7 stem, the 3x3 layers of each stage, the strided 3x3 and 1x1 shortcuts,
                the batch normalisations (in training: batch statistics)
  resnet50      the bottlenecks' 1x1 and 3x3 layers (stride on the 3x3, torchvision's v1.5)
  mobilenet_v2  the stem, the depthwise 3x3 layers (stride 1 and 2) and the 1x1 expansions and
                projections
  vgg16         the 3x3 layers of each stage and the first max pool
  resnet_cifar  the ResNet `fastconv train --model resnetN` trains (32 x 32, width 16, batch
                64): its conv layers and batch normalisations
  inception_v3  the factorised 1x7, 7x1, 1x3 and 3x1 windows of Mixed_6b, 6c and 7b (299 x 299)
  resnext50     the grouped 3x3 layer of each stage (32 groups)
  enet          ENet's initial 3 -> 13 stride-2 3x3 and its bottlenecks' 3x3, 5x1 and 1x5
                windows on 16 and 32 channels (512 x 512 images)
  decoders      the transposed convolutions of the DCGAN generator (PyTorch's example: 4x4,
                1 x 1 noise to 64 x 64 images) and of a U-Net's decoder (2x2, stride 2, on
                256 x 256 images: 16 x 16 to 256 x 256), with the decoder's 3x3 convs and 1x1
                head, and EDSR's 3x3 tail to RGB
  all           every suite (default)

Implementations: each conv algorithm of fastconv.algorithms(device) and "auto" (pooling and
batch norm: "fastconv", the ops); "numpy", the NumPy reference (algo "reference"; --no-numpy
skips it, the big layers take it seconds); "torch", PyTorch's torch.nn.functional on as many
threads (on a GPU: cuDNN, FP32, TF32 off), when torch is installed. conv2d_backward (and
conv_transpose2d_backward) is the input and the weight gradient together; torch's backward is
torch.autograd.grad, timed without the forward.

Timing: one untimed warm-up call (it compiles the JIT kernels), whose result is checked against
PyTorch's ("err vs torch"), then --repeats rounds, each timing one call of every implementation
in turn (a busy neighbour slows all alike); the median and the minimum. GFLOP/s counts 2 x
multiply-adds for convolutions (twice the forward's for the backward; a transposed one counts
those of the conv2d whose input gradient it is); pooling and batch norm report GB/s read and
written. "% SGEMM" is the row's GFLOP/s over the machine's float32 GEMM rate through
NumPy's BLAS on the same thread count (4096^3, best of 3, measured at the start of the run): how
close the kernel comes to what this CPU can do. "vs numpy" and "vs torch" are that baseline's
median time divided by the row's: above 1 means faster than the baseline.

Example: fastconv bench --suite resnet18 --threads 1,2 --markdown resnet18.md
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastconv", description="Numba convolution and pooling kernels: inspect the "
        "installation and benchmark it.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    info = commands.add_parser(
        "info", help="versions, devices, threads, BLAS, algorithms and autotuning",
        description="Print the versions, the devices found (CPU model and SIMD), the vector width "
        "the CPU kernels compile to, the threads, "
        "the BLAS libraries loaded and the one fastconv's products call, the algorithms per "
        "device, the autotune cache path and whether autotuning is on.")
    info.set_defaults(command=_info)
    info.add_argument("--kernels", action="store_true",
                      help="also the static report of every CUDA kernel for sm_90 (registers, "
                      "spills, shared memory, occupancy, instruction mix; needs numba-cuda, "
                      "ptxas and nvdisasm, not a GPU): benchmarks/kernel_report.py's table")

    run = commands.add_parser(
        "bench", help="benchmark every op and algorithm against NumPy and PyTorch",
        description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.set_defaults(command=_bench, parser=run)
    run.add_argument("--suite", choices=bench.SUITE_NAMES, default="all",
                     help="the network whose layers to run (default: all)")
    run.add_argument("--layers", type=lambda v: v.split(","), metavar="NAME[,NAME...]",
                     help="only these layers of the suite, by name (e.g. c1,s2.max or "
                     "lenet5/c1; the names are in the output's header)")
    run.add_argument("--quick", action="store_true",
                     help="a smoke run, checking results and never speed: batch 1 (LeNet-5 8), "
                     f"images 1/{bench.QUICK_SIZE_DIVISOR} the size, 3 repeats (1 for numpy), "
                     "SGEMM on 1024^3; --repeats, --numpy-repeats and --batch still override")
    run.add_argument("--batch", type=int, metavar="N",
                     help=f"set every layer's batch size to N (default: {bench.BATCH}, LeNet-5 "
                     "256)")
    run.add_argument("--no-numpy", action="store_true",
                     help="leave out the NumPy reference (slow on the big layers)")
    run.add_argument("--impls", type=lambda text: text.split(","), metavar="NAME[,NAME...]",
                     help="time only these implementations (e.g. auto,torch: the direct "
                     "kernels take seconds on VGG's layers); default: all")
    run.add_argument("--repeats", type=int, metavar="N",
                     help="timed calls per fastconv and torch measurement (default: 10, "
                     "--quick: 3)")
    run.add_argument("--numpy-repeats", type=int, metavar="N",
                     help="timed calls of the slow NumPy baseline (default: 3, --quick: 1)")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="the arrays' dtype (default: float32)")
    run.add_argument("--threads", type=_thread_counts, metavar="N[,N...]",
                     help="thread counts to run the suite at, in turn, for fastconv, its BLAS "
                     "and torch (fastconv.set_num_threads; e.g. 1,2; default: as many as "
                     "Numba uses, NUMBA_NUM_THREADS)")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                     help="where to run (default: cpu). cuda compares with PyTorch's cuDNN "
                     "(FP32, TF32 off) and times with CUDA events")
    run.add_argument("--gemm", type=int, metavar="N",
                     help="with --device cuda: also time fastconv's GEMM kernel against cuBLAS "
                     "on N x N x N (e.g. 4096)")
    run.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    run.add_argument("--json", metavar="PATH",
                     help="also write the machine and the rows as JSON")
    run.add_argument("--markdown", metavar="PATH",
                     help="also write the header and the table as Markdown "
                     "(e.g. benchmarks/results/cpu.md)")
    run.add_argument("--plot", metavar="PATH",
                     help="also draw a PNG bar chart of the speed-ups over numpy (needs "
                     "matplotlib)")

    fit = commands.add_parser(
        "train", help="train a CNN (LeNet-5, a ResNet) on Fashion-MNIST or MNIST",
        description="Train LeNet-5 or a CIFAR-style ResNet with fastconv's kernels: progress "
        "per epoch (a bar on a terminal; in a log file or a pipe a line every 10 s), the test "
        "accuracy after each epoch, and in --out: checkpoint.npz (weights, buffers, optimiser "
        "state, settings and curves, NumPy arrays only: the run's one commit point, renamed "
        "into place after each epoch, so a kill leaves the last epoch's run or the new one), "
        "and its views run.json, curves.csv and curves.png. A non-finite loss or Ctrl-C stops "
        "the run, keeping the last checkpoint. Each model has its recipe, which the options "
        "override: LeNet-5 trains with Adam at 1e-3; a ResNet with SGD (momentum 0.9) at 0.1, "
        "weight decay 5e-4 and a cosine schedule (He et al.'s CIFAR recipe, without its "
        "augmentation, which costs accuracy over a few epochs: --augment adds it). "
        "Data comes from --data-root, $FASTCONV_DATA, ~/.cache/fastconv/datasets, Debian's "
        "dataset-fashion-mnist, or a download.",
        epilog="Example: fastconv train --model resnet8 --epochs 5 --out runs/resnet8")
    fit.set_defaults(command=_train, parser=fit)
    fit.add_argument("--model", choices=train.MODELS,
                     help="the network: LeNet-5, or the CIFAR-style ResNet of depth 8, 14, 20 "
                     "or 32 (width 16) (default: lenet5)")
    fit.add_argument("--dataset", choices=train.DATASETS,
                     help="fashion-mnist (60k/10k) or mnist (the full set where present, "
                     "else 8k/2k of its test set) (default: fashion-mnist)")
    fit.add_argument("--epochs", type=int, default=10, help="epochs in all (default: 10)")
    fit.add_argument("--batch-size", type=int, help="images per step (default: 64)")
    fit.add_argument("--optimizer", choices=train.OPTIMIZERS,
                     help="adam, or sgd with momentum 0.9 (default: the model's recipe)")
    fit.add_argument("--lr", type=float,
                     help="(initial) learning rate (default: 1e-3 for lenet5, 0.1 for a resnet)")
    fit.add_argument("--weight-decay", type=float, metavar="L2",
                     help="L2 penalty added to the gradients, as torch.optim's weight_decay "
                     "(default: 0 for lenet5, 5e-4 for a resnet)")
    fit.add_argument("--schedule", choices=train.SCHEDULES,
                     help="cosine: the learning rate annealed to 0 over the run, step by step "
                     "(resumed runs continue the curve); none: constant (default: none for "
                     "lenet5, cosine for a resnet)")
    fit.add_argument("--augment", action=argparse.BooleanOptionalAction,
                     help="random shifts of up to 2 pixels and horizontal flips, seeded "
                     "(default: off)")
    fit.add_argument("--activation", choices=("relu", "tanh", "sigmoid"),
                     help="LeNet-5's activation (default: relu; tanh with --pool avg is 1998's)")
    fit.add_argument("--pool", choices=("max", "avg"),
                     help="LeNet-5's subsampling (default: max)")
    fit.add_argument("--device", default="cpu",
                     help="cpu (default) or cuda[:N]: every conv and pooling on fastconv's CUDA "
                     "kernels (needs the cuda12 or cuda13 extra and a GPU)")
    fit.add_argument("--seed", type=int,
                     help="seeds the initialisation and the shuffles (default: 0)")
    fit.add_argument("--out", metavar="DIR",
                     help="the run directory (default: runs/MODEL, or the --resume'd run's)")
    fit.add_argument("--resume", metavar="CHECKPOINT",
                     help="continue a run from its checkpoint.npz (or its directory) up to "
                     "--epochs, with its saved settings (giving another --lr, --limit, ... is "
                     "an error)")
    fit.add_argument("--data-root", metavar="DIR", help="where the dataset files are")
    fit.add_argument("--limit", type=int, metavar="N",
                     help="train on the first N training images only (a quick run)")
    fit.add_argument("--threads", type=int, metavar="N", help="threads for the kernels")

    check = commands.add_parser(
        "eval", help="accuracy and confusion matrix of a checkpoint",
        description="Evaluate a checkpoint written by `fastconv train` on a dataset's test set: "
        "loss, accuracy and the confusion matrix (rows: true class, columns: predicted).")
    check.set_defaults(command=_eval, parser=check)
    check.add_argument("checkpoint", help="a checkpoint.npz or its run directory")
    check.add_argument("--dataset", choices=train.DATASETS,
                       help="the test set (default: the one the run trained on)")
    check.add_argument("--data-root", metavar="DIR", help="where the dataset files are")
    check.add_argument("--batch-size", type=int, default=1000,
                       help="images per forward pass (default: 1000)")
    return parser


def main(argv=None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = _parser().parse_args(argv)
    return args.command(args)


def _info(args) -> int:
    about = dict(machine.describe(machine.machine()))
    print(f"fastconv {__version__}")
    print(f"versions: {about['versions']}")
    print(f"devices:\n  cpu: {about['cpu']}\n  cuda: {_cuda_about()}")
    print(f"vectors: {about['vectors']}")
    print(f"threads: {about['threads']}")
    print(f"BLAS: {about['BLAS']}")
    print(f"products: {gemm.BLAS}, one thread inside each of fastconv's (kernels/gemm.py)")
    print(f"malloc: {about['malloc']}")
    print(f"algorithms:\n  cpu: {', '.join(ops.algorithms('cpu'))}")
    try:
        print(f"  cuda: {', '.join(ops.algorithms('cuda'))}")
    except RuntimeError:
        pass
    print("CUDA kernels each implementation launches:")
    for op, where, algo in registry.entries():
        if where == "cuda":
            print(f"  {op} {algo}: {', '.join(registry.launches(op, where, algo))}")
    print(f"autotune: {'on' if dispatch.autotuning() else 'off'} (cache: {dispatch.cache_path()})")
    if args.kernels:
        from .bench import kernels
        missing = [name for name in ("ptxas", "nvdisasm") if kernels.tool(name) is None]
        if missing:
            print(f"kernels: {' and '.join(missing)} not found (pip install nvidia-cuda-nvcc "
                  "nvidia-cuda-nvdisasm)")
            return 1
        print(kernels.markdown(kernels.reports(ccs=((9, 0),), dtypes=("float32",))), end="")
    return 0


def _cuda_about() -> str:
    """The GPU and its versions, or why there is no CUDA backend."""
    try:
        return ", ".join(f"{k} {v}" for k, v in device.cuda_backend().info().items())
    except RuntimeError as err:
        return f"unavailable: {err}"


def _thread_counts(text):
    """--threads: a comma-separated list of positive ints."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts such as 1,2, got {text!r}")
    return counts


def _bench(args) -> int:
    error = args.parser.error
    if args.device == "cuda":
        try:
            device.cuda_backend()
        except RuntimeError as err:
            error(f"--device cuda: {err}")
    elif args.gemm is not None:
        error("--gemm needs --device cuda")
    for name in ("batch", "repeats", "numpy_repeats", "gemm"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            error(f"--{name.replace('_', '-')} must be at least 1")
    if args.plot:
        try:
            bench.check_plotting()
        except ImportError as err:
            error(str(err))
    chosen = bench.cases(args.suite, args.batch, args.quick)
    if args.layers:
        known = {c.name for c in chosen} | {c.name.split("/", 1)[1] for c in chosen}
        unknown = [name for name in args.layers if name not in known]
        if unknown:
            error(f"--layers: no layer {', '.join(unknown)} in suite {args.suite}")
        chosen = [c for c in chosen
                  if c.name in args.layers or c.name.split("/", 1)[1] in args.layers]
    repeats = args.repeats or (3 if args.quick else 10)
    numpy_repeats = args.numpy_repeats or (1 if args.quick else 3)
    rows, sgemm, sgemm_size = [], {}, 1024 if args.quick else 4096
    if args.device == "cpu" and not args.quick:
        bench.settle_memory()
    for threads in args.threads or [runtime.get_num_threads()]:
        try:
            runtime.set_num_threads(threads)
        except ValueError as err:
            error(f"--threads: {err}")
        sgemm[threads] = bench.sgemm_gflops(sgemm_size, on=args.device)
        rows += bench.run(chosen, np.dtype(args.dtype), repeats, numpy_repeats, on=args.device,
                          sgemm=sgemm[threads], numpy=not args.no_numpy, only=args.impls)

    # every thread count of the run, not only the last one's
    measured_on = {**machine.machine(args.device), "threads": ", ".join(map(str, sgemm)),
                   "sgemm_size": sgemm_size,
                   "sgemm": {t: rate for t, rate in sgemm.items() if rate is not None}}
    print(bench.table(rows, measured_on), end="")
    if args.gemm:
        for row in bench.gemm(args.gemm, np.dtype(args.dtype), repeats):
            vs = f", {row['vs_cublas']:.2f}x cuBLAS" if row["vs_cublas"] else ""
            print(f"gemm {row['size']}^3 {row['dtype']} {row['impl']}: {row['median_ms']:.3f} ms, "
                  f"{row['gflops']:.0f} GFLOP/s{vs}, rel. error {row['rel_error']:.1e}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, bench.COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": measured_on, "rows": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(bench.markdown(rows, measured_on))
    if args.plot:
        bench.plot(rows, measured_on, args.plot)
    for path in filter(None, (args.csv, args.json, args.markdown, args.plot)):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _train(args) -> int:
    error = args.parser.error
    for name in ("epochs", "batch_size", "limit", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr is not None and args.lr <= 0:
        error("--lr must be positive")
    if args.weight_decay is not None and args.weight_decay < 0:
        error("--weight-decay must be at least 0")
    if args.threads is not None:
        runtime.set_num_threads(args.threads)
    asked = [name for name in train.KEPT_ON_RESUME if getattr(args, name) is not None]
    settings = train.recipe(args.model or "lenet5")
    settings.update({name: getattr(args, name) for name in asked})
    config = train.RunConfig(epochs=args.epochs, device=args.device, **settings)
    out = args.out or _run_directory(args.resume) or f"runs/{config.model}"
    try:
        train.fit(config, out, root=args.data_root, resume=args.resume, asked=asked)
    except train.Stopped as err:
        print(f"fastconv train: {err}", file=sys.stderr)
        return 130 if isinstance(err.__cause__, KeyboardInterrupt) else 1
    except train.RunError as err:
        print(f"fastconv train: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        error(str(err))
    return 0


def _run_directory(checkpoint):
    """Where a resumed run goes on without --out: the checkpoint's own directory."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def _eval(args) -> int:
    try:
        config, model, _, _ = train.load_checkpoint(args.checkpoint)
    except train.RunError as err:
        print(f"fastconv eval: error: {err}", file=sys.stderr)
        return 2
    try:
        _, _, images, labels = train.load_dataset(args.dataset or config.dataset,
                                                  args.data_root)
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        args.parser.error(str(err))
    batches = train.data.Batches(images, labels, args.batch_size, shuffle=False,
                                 normalize=tuple(config.normalization))
    loss, accuracy, predicted = train.evaluate(model, batches)
    counts = train.confusion_matrix(labels, predicted)
    print(f"{args.dataset or config.dataset} test: loss {loss:.4f}, accuracy {accuracy:.4f} "
          f"({int(np.trace(counts))}/{len(labels)})")
    print("confusion matrix (rows: true class, columns: predicted):")
    width = len(str(counts.max()))
    print("     " + " ".join(f"{c:>{width}}" for c in range(counts.shape[1])))
    for c, row in enumerate(counts):
        print(f"  {c:>2} " + " ".join(f"{v:>{width}}" for v in row))
    return 0
