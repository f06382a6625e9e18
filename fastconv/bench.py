"""Benchmarks of every op and algorithm against NumPy and PyTorch, on the CPU or the GPU.

Shared by ``fastconv bench`` and the pytest-benchmark suite (benchmarks/test_bench.py). A *case*
is one layer of a known network (LeNet-5, a ResNet block), benchmarked forward and backward with
every implementation: each of fastconv's conv algorithms and "auto" (for pooling, the ops:
"fastconv"), and the baselines: on the CPU the NumPy reference ("numpy") and PyTorch ("torch")
when it is installed; on the GPU PyTorch's cuDNN ("torch", FP32 with TF32 off) when PyTorch sees
a GPU. :func:`gemm` compares fastconv's hand-written GEMM kernel with cuBLAS.

Timings never include the first call, which compiles the JIT kernels: after one warm-up call,
each implementation runs ``repeats`` times, timed by :func:`time.perf_counter` on the CPU and by
CUDA events around the call on the GPU, and the median and the minimum are reported. A speed-up
"vs numpy" or "vs torch" is that baseline's median divided by the row's median, so above 1 means
faster than the baseline.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from . import __version__, device, dispatch, geometry, ops, runtime

SHAPES = ("lenet", "resnet", "all")
BASELINES = ("numpy", "torch")
QUICK_BATCH_DIVISOR = 8  # --quick divides every batch size by this (at least 1)
PLOT_HINT = "plotting needs matplotlib, which is not installed: pip install fastconv[plot]"


@dataclass(frozen=True)
class Case:
    """One benchmarked layer: ``op`` ("conv2d", "max_pool2d" or "avg_pool2d") on NCHW ``x``.

    Convolutions take OIHW filters ``w``, poolings a square ``kernel``; ``stride`` and
    ``padding`` are ints, as the ops take them.
    """
    name: str
    op: str
    x: tuple[int, int, int, int]
    w: tuple[int, int, int, int] | None = None
    kernel: int | None = None
    stride: int = 1
    padding: int = 0

    @property
    def dims(self) -> str:
        """The shapes and arguments in words, e.g. ``x 8x64x56x56, w 64x64x3x3, pad 1``."""
        parts = ["x " + "x".join(map(str, self.x))]
        if self.w is not None:
            parts.append("w " + "x".join(map(str, self.w)))
        if self.kernel is not None:
            parts.append(f"{self.op.split('_')[0]} {self.kernel}x{self.kernel}")
        if self.stride != 1:
            parts.append(f"stride {self.stride}")
        if self.padding:
            parts.append(f"pad {self.padding}")
        return ", ".join(parts)

    def geometry(self):
        """The op's resolved geometry (:mod:`fastconv.geometry`), NCHW."""
        if self.op == "conv2d":
            return geometry.conv_geometry(self.x, self.w, self.stride, self.padding, 1, 1, "NCHW")
        return geometry.pool_geometry(self.x, self.kernel, self.stride, self.padding, False, True,
                                      "NCHW")


def _pools(name, x):
    """Max and average 2x2 pooling with stride 2, LeNet's subsampling layers."""
    return tuple(Case(name, op, x, kernel=2, stride=2) for op in ("max_pool2d", "avg_pool2d"))


SHAPE_SETS = {
    "lenet": (
        Case("lenet.C1", "conv2d", (256, 1, 32, 32), (6, 1, 5, 5)),
        *_pools("lenet.S2", (256, 6, 28, 28)),
        Case("lenet.C3", "conv2d", (256, 6, 14, 14), (16, 6, 5, 5)),
        *_pools("lenet.S4", (256, 16, 10, 10)),
    ),
    "resnet": (
        Case("resnet.3x3", "conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=1),
        Case("resnet.3x3s2", "conv2d", (8, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1),
        Case("resnet.1x1", "conv2d", (8, 256, 28, 28), (64, 256, 1, 1)),
    ),
}


# On a GPU the ResNet layers run at batch 64, with a wide 3x3 layer besides.
GPU_SHAPE_SETS = {
    "lenet": SHAPE_SETS["lenet"],
    "resnet": (
        *(dataclasses.replace(c, x=(64, *c.x[1:])) for c in SHAPE_SETS["resnet"]),
        Case("resnet.3x3-256", "conv2d", (64, 256, 28, 28), (256, 256, 3, 3), padding=1),
    ),
}


def cases(shapes: str = "all", batch: int | None = None, quick: bool = False,
          device: str = "cpu") -> list[Case]:
    """The cases of the shape set ``shapes`` ("lenet", "resnet" or "all") on ``device``.
    ``batch`` sets every batch size; otherwise ``quick`` divides each by
    :data:`QUICK_BATCH_DIVISOR` (at least 1)."""
    if shapes not in SHAPES:
        raise ValueError(f"shapes must be one of {SHAPES}, got {shapes!r}")
    sets = SHAPE_SETS if device == "cpu" else GPU_SHAPE_SETS
    chosen = [c for name, cs in sets.items() if shapes in (name, "all") for c in cs]
    if batch is None and not quick:
        return chosen
    return [dataclasses.replace(c, x=(batch or max(1, c.x[0] // QUICK_BATCH_DIVISOR), *c.x[1:]))
            for c in chosen]


def directions(case: Case) -> tuple[str, str]:
    """The benchmarked ops of a case: forward, then backward (conv: input and weight)."""
    return case.op, f"{case.op}_backward"


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def has_torch_cuda() -> bool:
    """Whether PyTorch is installed and sees a GPU (never under the CUDA simulator)."""
    if device.simulated() or not has_torch():
        return False
    import torch
    return torch.cuda.is_available()


def baselines(on: str = "cpu") -> tuple[str, ...]:
    """The baselines that run on device ``on``."""
    if on == "cpu":
        return ("numpy", "torch") if has_torch() else ("numpy",)
    return ("torch",) if has_torch_cuda() else ()


def impls(op: str, on: str = "cpu") -> tuple[str, ...]:
    """Implementations benchmarked for ``op`` on device ``on``: fastconv's, then the baselines."""
    if op.startswith("conv2d"):
        ours = (*(a for a in ops.algorithms(on) if a != dispatch.REFERENCE), "auto")
    else:
        ours = ("fastconv",)
    return ours + baselines(on)


def inputs(case: Case, dtype, on: str = "cpu") -> dict:
    """Random x, w (conv) and the output gradient gy of ``case`` in ``dtype`` on device ``on``,
    from a fixed seed."""
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal(case.x, dtype)}
    if case.w is not None:
        arrays["w"] = rng.standard_normal(case.w, dtype)
    arrays["gy"] = rng.standard_normal(case.geometry().y_shape, dtype)
    return {name: device.to_device(a, on) for name, a in arrays.items()}


def runner(case: Case, op: str, impl: str, arrays: dict, on: str = "cpu") -> Callable[[], object]:
    """A call of ``impl`` computing ``op`` (one of :func:`directions`) on ``arrays`` on device
    ``on``, with all setup done, ready to be timed."""
    if impl == "torch":
        return _torch_runner(case, op, arrays, on)
    if case.op == "conv2d":
        return _conv_runner(case, op, dispatch.REFERENCE if impl == "numpy" else impl, arrays,
                            on)
    return _pool_runner(case, op, impl, arrays, on)


def _conv_runner(case, op, algo, a, on):
    args = {"stride": case.stride, "padding": case.padding, "algo": algo, "device": on}
    if op == "conv2d":
        return lambda: ops.conv2d(a["x"], a["w"], **args)

    def backward():
        ops.conv2d_backward_input(a["gy"], a["w"], a["x"].shape, **args)
        ops.conv2d_backward_weight(a["gy"], a["x"], a["w"].shape, **args)
    return backward


# What each pooling op of fastconv.ops takes before its pooling arguments.
_POOL_ARGS = {"max_pool2d": ("x",), "max_pool2d_backward": ("gy", "x"),
              "avg_pool2d": ("x",), "avg_pool2d_backward": ("gy", "x_shape")}


def _pool_runner(case, op, impl, a, on):
    a = {**a, "x_shape": a["x"].shape}
    if impl == "numpy":  # the registered reference takes the geometry, and arrays only
        fn, p = dispatch.implementations(op, "cpu")[dispatch.REFERENCE], case.geometry()
        arrays = [a[name] for name in _POOL_ARGS[op] if name != "x_shape"]
        return lambda: fn(p, *arrays)
    fn, args = getattr(ops, op), [a[name] for name in _POOL_ARGS[op]]
    return lambda: fn(*args, case.kernel, case.stride, case.padding, device=on)


def _torch_runner(case, op, a, on):
    """PyTorch on fastconv's thread count, or on the GPU with cuDNN in FP32 (TF32 off, its own
    autotuning on), on the arrays themselves (zero-copy); backward is autograd's, timed without
    the forward."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(runtime.get_num_threads())
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = on == "cuda"  # cuDNN at its best: it times its algorithms
    wrap = torch.from_numpy if on == "cpu" else torch.from_dlpack
    tensors = [wrap(a[name]) for name in ("x", "w") if name in a]
    if case.op == "conv2d":
        def forward(x, w):
            return F.conv2d(x, w, stride=case.stride, padding=case.padding)
    else:
        pool = getattr(F, case.op)

        def forward(x):
            return pool(x, case.kernel, case.stride, case.padding)
    if op == case.op:
        def run():
            with torch.no_grad():
                return forward(*tensors)
        return run
    leaves = [t.detach().requires_grad_() for t in tensors]  # the gradients of x and w
    y, gy = forward(*leaves), wrap(a["gy"])
    return lambda: torch.autograd.grad(y, leaves, gy, retain_graph=True)


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the minimum of ``repeats`` timed calls."""
    median: float
    min: float
    repeats: int


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1, on: str = "cpu") -> Timing:
    """Time ``fn`` ``repeats`` times after ``warmup`` untimed calls (the first one compiles)."""
    for _ in range(warmup):
        fn()
    clock = _gpu_seconds if on == "cuda" and not device.simulated() else _host_seconds
    times = [clock(fn) for _ in range(repeats)]
    return Timing(statistics.median(times), min(times), repeats)


def _host_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _gpu_seconds(fn) -> float:
    """The GPU time of the work ``fn`` queues, between CUDA events on CuPy's current stream
    (fastconv's stream; PyTorch's default stream is ordered with it)."""
    import cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


def work(case: Case, op: str, arrays: dict) -> tuple[float | None, float | None]:
    """(flops, bytes) of one call of ``op``: flops for a convolution (its backward computes the
    input and the weight gradient, each as costly as the forward), the bytes read and written
    for a pooling."""
    if case.op == "conv2d":
        return case.geometry().flops * (1 if op == case.op else 2), None
    x, gy = arrays["x"], arrays["gy"]
    reads_x_twice = op == "max_pool2d_backward"  # reads x and gy, writes gx
    return None, x.itemsize * ((2 if reads_x_twice else 1) * x.size + gy.size)


COLUMNS = ("op", "shape", "dims", "impl", "dtype", "median_ms", "min_ms", "repeats", "gflops",
           "gbps", "vs_numpy", "vs_torch")


def run(chosen: list[Case], dtype=np.float32, repeats: int = 10, numpy_repeats: int = 3,
        progress: bool = True, on: str = "cpu") -> list[dict]:
    """Benchmark every case forward and backward with every implementation on device ``on``;
    one row (a dict with the keys :data:`COLUMNS`) per op, case and implementation.
    ``numpy_repeats`` applies to the slow NumPy baseline. A tqdm bar on stderr shows progress."""
    dtype = np.dtype(dtype)
    total = sum(len(impls(op, on)) for case in chosen for op in directions(case))
    rows = []
    with tqdm(total=total, desc="fastconv bench", unit="run", disable=not progress) as bar:
        for case in chosen:
            arrays = inputs(case, dtype, on)
            for op in directions(case):
                timings = {}
                for impl in impls(op, on):
                    bar.set_postfix_str(f"{op} {case.name} {impl}")
                    n = numpy_repeats if impl == "numpy" else repeats
                    timings[impl] = measure(runner(case, op, impl, arrays, on), n, on=on)
                    bar.update()
                flops, nbytes = work(case, op, arrays)
                for impl, t in timings.items():
                    vs = {b: timings[b].median / t.median if b in timings and b != impl else None
                          for b in BASELINES}
                    rows.append({
                        "op": op, "shape": case.name, "dims": case.dims, "impl": impl,
                        "dtype": dtype.name, "median_ms": t.median * 1e3, "min_ms": t.min * 1e3,
                        "repeats": t.repeats,
                        "gflops": flops / t.median / 1e9 if flops else None,
                        "gbps": nbytes / t.median / 1e9 if nbytes else None,
                        "vs_numpy": vs["numpy"], "vs_torch": vs["torch"]})
    return rows


def versions() -> dict:
    """Versions of fastconv, Python and the libraries it runs with (torch if installed)."""
    found = {"fastconv": __version__, "python": platform.python_version()}
    for name in ("numpy", "numba", "scipy", "torch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def machine(on: str = "cpu") -> dict:
    """What the numbers were measured on: CPU, SIMD, threads, BLAS and versions, and the GPU
    and its versions when ``on`` is "cuda"."""
    blas = [f"{lib['internal_api']} {lib['version']} ({lib['architecture']}, "
            f"{lib['num_threads']} threads)" for lib in runtime.blas()]
    info = {"cpu": runtime.cpu_name(), "simd": runtime.simd_flags(),
            "threads": runtime.get_num_threads(), "cpus": runtime.cpu_count(),
            "blas": list(dict.fromkeys(blas)), "malloc": runtime.malloc(),
            "versions": versions()}
    if on == "cuda":
        info["gpu"] = device.cuda_backend().info()
    return info


def describe(info: dict) -> list[tuple[str, str]]:
    """``(label, text)`` lines describing a :func:`machine`, for headers and ``fastconv info``."""
    return [
        ("cpu", f"{info['cpu']} (SIMD: {' '.join(info['simd']) or 'none found'})"),
        ("threads", f"{info['threads']} (of {info['cpus']} CPUs)"),
        ("BLAS", "; ".join(info["blas"]) or "none found"),
        ("malloc", info["malloc"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())),
        *((("gpu", ", ".join(f"{k} {v}" for k, v in info["gpu"].items())),)
          if "gpu" in info else ()),
    ]


def header(info: dict, rows: list[dict]) -> list[tuple[str, str]]:
    """The machine, the settings and the shapes: what makes a pasted table self-describing."""
    shown = dict.fromkeys((r["shape"], r["dims"]) for r in rows)
    ours = next((r["repeats"] for r in rows if r["impl"] != "numpy"), "-")
    numpy = next((r["repeats"] for r in rows if r["impl"] == "numpy"), "-")
    settings = (f"{rows[0]['dtype'] if rows else '-'}; median and min of {ours} calls ({numpy} "
                "for numpy) after a warm-up call; vs numpy / vs torch: that median / this "
                "median (> 1: faster)")
    return [*describe(info), ("timing", settings),
            *((name, dims) for name, dims in shown)]


def gemm(size: int, dtype=np.float32, repeats: int = 10) -> list[dict]:
    """fastconv's tiled GEMM kernel against cuBLAS (CuPy's matmul, absent in the simulator) on
    ``size`` x ``size`` x ``size``: one row per implementation with its median time, GFLOP/s,
    its error against a float64 product and its speed relative to cuBLAS (> 1: faster)."""
    cuda = device.cuda_backend()
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1, size, size)).astype(dtype) for _ in range(2))
    want = a[0].astype(np.float64) @ b[0]
    a_dev, b_dev = (device.to_device(m, "cuda") for m in (a, b))
    out = cuda.xp.empty((1, size, size), dtype)
    runs = {"fastconv": lambda: cuda.gemm(a_dev, b_dev, out=out)}
    if not device.simulated():
        runs["cublas"] = lambda: cuda.xp.matmul(a_dev, b_dev, out=out)
    rows = []
    for impl, fn in runs.items():
        timing = measure(fn, repeats, on="cuda")
        got = device.to_device(out, "cpu")[0]
        rows.append({"impl": impl, "size": size, "dtype": np.dtype(dtype).name,
                     "median_ms": timing.median * 1e3, "min_ms": timing.min * 1e3,
                     "gflops": 2 * size ** 3 / timing.median / 1e9,
                     "rel_error": float(np.linalg.norm(got - want) / np.linalg.norm(want))})
    for row in rows:
        cublas = next((r for r in rows if r["impl"] == "cublas"), None)
        row["vs_cublas"] = cublas["median_ms"] / row["median_ms"] if cublas else None
    return rows


_TITLES = {"op": "op", "shape": "shape", "impl": "impl", "median_ms": "median ms",
           "min_ms": "min ms", "gflops": "GFLOP/s", "gbps": "GB/s", "vs_numpy": "vs numpy",
           "vs_torch": "vs torch"}


def _number(value, suffix=""):
    """Three significant digits, never an exponent; blank for None."""
    if value is None:
        return ""
    digits = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
    return f"{value:.{digits}f}{suffix}"


def _cells(row: dict) -> list[str]:
    return [row["op"], row["shape"], row["impl"], _number(row["median_ms"]),
            _number(row["min_ms"]), _number(row["gflops"]), _number(row["gbps"]),
            _number(row["vs_numpy"], "x"), _number(row["vs_torch"], "x")]


def table(rows: list[dict], info: dict) -> str:
    """The header and an aligned text table of ``rows``, for the terminal."""
    lines = [f"{label}: {text}" for label, text in header(info, rows)]
    grid = [list(_TITLES.values()), *map(_cells, rows)]
    widths = [max(len(r[i]) for r in grid) for i in range(len(_TITLES))]
    for n, cells in enumerate(grid):
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
                     .rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], info: dict) -> str:
    """The header as a list and the rows as a Markdown table (for benchmarks/results/*.md)."""
    lines = ["# fastconv benchmarks", ""]
    lines += [f"- **{label}**: {text}" for label, text in header(info, rows)]
    lines += ["", "| " + " | ".join(_TITLES.values()) + " |",
              "|" + "|".join("---" if i < 3 else "--:" for i in range(len(_TITLES))) + "|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _matplotlib():
    """matplotlib's Figure (drawn without pyplot, so no GUI backend) and Patch."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as err:
        raise ImportError(PLOT_HINT) from err
    return Figure, Patch


def check_plotting() -> None:
    """Raise ImportError, saying what to install, if :func:`plot` cannot run."""
    _matplotlib()


def plot(rows: list[dict], info: dict, path) -> None:
    """A PNG bar chart of the speed-up over numpy (log scale), one bar group per op and shape."""
    Figure, Patch = _matplotlib()
    groups = list(dict.fromkeys((r["op"], r["shape"]) for r in rows))
    colors = {impl: f"C{i}" for i, impl in enumerate(dict.fromkeys(r["impl"] for r in rows))}
    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) + 2), 5), layout="constrained")
    ax = fig.add_subplot()
    for j, group in enumerate(groups):
        bars = [r for r in rows if (r["op"], r["shape"]) == group]
        width = 0.8 / len(bars)
        for i, r in enumerate(bars):
            ax.bar(j + (i - (len(bars) - 1) / 2) * width, r["vs_numpy"] or 1.0, width,
                   color=colors[r["impl"]])
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{op}\n{shape}" for op, shape in groups], rotation=60,
                  ha="right", fontsize=8)
    ax.set_ylabel("x faster than numpy (median time)")
    ax.set_title(f"fastconv on {info['cpu']}, {info['threads']} threads", fontsize=9)
    ax.legend(handles=[Patch(color=c, label=impl) for impl, c in colors.items()], fontsize=8)
    fig.savefig(path, format="png", dpi=120)
