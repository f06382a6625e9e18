"""The CPU kernels as an AVX2 machine compiles them, on whatever CPU runs the tests: a process
that sees the host without its AVX-512 features (tests/avx2_host/sitecustomize.py) and compiles
for Haswell (NUMBA_CPU_NAME) runs the machine-code checks (tests/test_kernel_ir.py: packed FMAs,
none scalar, no double precision) and the blocked, depthwise, gemm_short, gemm_tall and Winograd
row kernels' tests against the float64 reference and PyTorch, with 8-lane register tiles and AVX2's
tile lengths. The CPUs CI draws are AVX-512 or AVX2: on AVX-512 ones, AVX2's short tiles compiled
to scalar FMAs unseen until this simulation showed them (kernels/tile_fmas.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a nested suite, compiled afresh, in a subprocess

ROOT = Path(__file__).resolve().parent.parent


def test_kernels_compiled_for_avx2(tmp_path):
    from fastconv.kernels import VECTOR_LANES, vectors

    if VECTOR_LANES == 8:
        pytest.skip(f"this CPU compiles the kernels for AVX2 itself ({vectors()}): the other "
                    "tests in this run are the AVX2 checks this one would repeat")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_FEATURES",)}
    env.update(NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path),
               FASTCONV_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "avx2_host"),
                                           env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    # the tiles, and algo="auto"'s rule (which takes its AVX2 tree), see 8 lanes
    check = subprocess.run([sys.executable, "-c", "from fastconv.kernels import vectors; "
                            "from fastconv.implementations.conv2d import FEATURES; "
                            "print(vectors(), FEATURES['lanes'](None))"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    assert "AVX2" in check.stdout and check.stdout.split()[-1] == "8", check.stdout
    files = [f"tests/test_{name}.py" for name in ("kernel_ir", "vector_moves", "conv",
                                                  "conv_depthwise", "conv_grouped", "matmul",
                                                  "winograd")]
    # of test_conv.py, the blocked kernels' tests (rows, columns, spans, weight tiles); of
    # test_matmul.py, gemm_short's and gemm_tall's (their tiles of 6 rows x 2 vectors); of
    # test_winograd.py, its rows of several blocks of lanes (8 tiles a transpose)
    chosen = ("kernel_ir or vector_moves or depthwise or grouped or blocked or row or column "
              "or short or tall")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
                          "not slow", "-k", chosen, *files], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1500)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert " passed" in output, output[-2000:]
