"""The pytest-benchmark suite: every op, layer and implementation of ``fastconv bench``.

Run with ``pytest benchmarks --benchmark-only``; pick with -k, e.g.
``-k "lenet5 and conv2d and not numpy"``. The shapes, the inputs and the implementations come from
:mod:`fastconv.bench`, so the numbers match the CLI's: one untimed warm-up call compiles the JIT
kernels, and the slow NumPy baseline gets fewer rounds. Results are grouped per op and shape.
The normal test run never collects this directory (pyproject's testpaths is tests/).
"""

import numpy as np
import pytest

from fastconv import bench

ROUNDS = 10
NUMPY_ROUNDS = 3

CASES = [pytest.param(case, op, impl, id=f"{case.name}-{op}-{impl}")
         for case in bench.cases("all") for op in bench.directions(case)
         for impl in bench.impls(op) if bench.serves(case, op, impl)]


@pytest.mark.parametrize(("case", "op", "impl"), CASES)
def test_bench(benchmark, case, op, impl):
    arrays = bench.inputs(case, np.float32)
    flops, nbytes = bench.work(case, op, arrays)
    benchmark.group = f"{op} {case.name}"
    benchmark.extra_info.update(dims=case.dims, flops=flops, bytes=nbytes)
    benchmark.pedantic(bench.runner(case, op, impl, arrays), warmup_rounds=1,
                       rounds=NUMPY_ROUNDS if impl == "numpy" else ROUNDS)
