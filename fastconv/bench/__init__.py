"""Benchmarks of every op and algorithm against NumPy and PyTorch, on the CPU or the GPU.

Shared by ``fastconv bench`` and the pytest-benchmark suite (benchmarks/test_bench.py): the
cases and how each implementation runs one (:mod:`.cases`), timing (:mod:`.timing`) and the
reports (:mod:`.report`); the machine's description comes from :mod:`fastconv.machine`. A
*case* is one layer of a known network, benchmarked forward and backward with every
implementation: each of fastconv's conv algorithms and "auto" (for pooling, the ops:
"fastconv"), and the baselines: on the CPU the NumPy reference ("numpy") and PyTorch ("torch")
when it is installed; on the GPU PyTorch's cuDNN ("torch", FP32 with TF32 off) when PyTorch
sees a GPU. :func:`gemm` compares fastconv's hand-written GEMM kernel with cuBLAS. :mod:`.fit`
fits the CPU's algo="auto" rule to the suite's measurements (benchmarks/fit_dispatch.py).
"""

from .cases import (
    BASELINES,
    BATCH,
    QUICK_SIZE_DIVISOR,
    SUITE_NAMES,
    SUITES,
    TRAIN_BATCH,
    Case,
    baselines,
    cases,
    directions,
    has_torch,
    has_torch_cuda,
    impls,
    inputs,
    runner,
    serves,
    work,
)
from .report import PLOT_HINT, check_plotting, header, markdown, plot, table
from .timing import COLUMNS, Timing, gemm, measure, run, settle_memory, sgemm_gflops

__all__ = ["BASELINES", "BATCH", "TRAIN_BATCH", "COLUMNS", "PLOT_HINT", "QUICK_SIZE_DIVISOR",
           "SUITES", "SUITE_NAMES", "Case", "Timing", "baselines", "cases", "check_plotting",
           "directions", "gemm", "has_torch", "has_torch_cuda", "header", "impls", "inputs",
           "markdown", "measure", "plot", "run", "runner", "serves", "settle_memory",
           "sgemm_gflops", "table",
           "work"]
