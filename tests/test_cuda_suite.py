"""The CUDA kernels' simulator tests, run in their own process: Numba's CUDA simulator must be
switched on (NUMBA_ENABLE_CUDASIM=1) before numba is first imported, which this process has
already done in real mode."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a nested simulator suite and a script, in subprocesses

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

ROOT = Path(__file__).resolve().parent.parent


def test_cuda_kernels_in_the_simulator():
    # the timeout only guards against a hang: on a Zen 3 runner (2026-12-02) the nested suite
    # ran past 600 s, its LeNet-5 training step in the simulator alone for minutes
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/cuda/test_sim.py", "-q",
                          "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1800)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert " passed" in output and "skipped" not in output, output


def test_launch_count_script_counts_a_training_step():
    run = subprocess.run([sys.executable, "benchmarks/launches.py", "--batch", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    sections, rows = [], {}
    for line in run.stdout.strip().splitlines():
        n, name = line.split(maxsplit=1)
        if name.endswith("in one training step"):
            assert int(n) == sum(rows.values()), run.stdout
            sections.append((name, rows))
            rows = {}
        else:
            rows[name] = int(n)
    (kernels_total, kernels), (operations_total, operations) = sections
    assert kernels_total.startswith("fastconv kernel launches"), run.stdout
    assert operations_total.startswith("array operations"), run.stdout
    # LeNet-5 with ReLU and max pooling: C1 direct (tiled forward, backward weight), C3 and C5
    # im2col + GEMM (C5 without im2col/col2im: its window is the whole input), the activations'
    # gradients in the bias gradients' kernels, the max pools' backward through the forward's
    # indices, softmax + cross-entropy + its gradient in one kernel, Adam's ten parameters in
    # one launch
    assert kernels == {"adam_step": 1, "gemm": 6, "conv2d_backward_bias": 3,
                       "max_pool2d_forward": 2, "max_pool2d_backward_indices": 2, "im2col": 2,
                       "col2im": 1, "conv2d_forward_nchw_tiled": 1, "conv2d_backward_weight": 1,
                       "softmax_cross_entropy": 1}, run.stdout
    # the two linear layers (forward, both gradients, the bias's sum) and F6's ReLU, the sum of
    # C3's per-image weight gradients, the loss's gradient scaled by the upstream one, the
    # backward's seed
    assert operations == {"matmul": 6, "add": 2, "add.reduce": 3, "maximum": 1, "greater": 1,
                          "multiply": 2, "ones_like": 1}, run.stdout
