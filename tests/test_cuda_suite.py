"""The CUDA kernels' simulator tests, run in their own process: Numba's CUDA simulator must be
switched on (NUMBA_ENABLE_CUDASIM=1) before numba is first imported, which this process has
already done in real mode. The process starts as soon as collection selects its test
(tests/conftest.py: the test is marked runs_beside), so that on a second core it runs beside the
rest of the run, and the test, moved last, reads its result."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a nested simulator suite and a script, in subprocesses

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

ROOT = Path(__file__).resolve().parent.parent
# A hang guard only, counted from the start: the suite took 14 minutes on a Zen 3 runner beside
# the other tests (2026-12-02), and the simulator's threads slow badly on a loaded machine.
DEADLINE_S = 3600


class SimulatorSuite:
    """The nested suite's process and its output, kept in a file (a pipe could fill and stall
    it while nobody reads)."""

    def __init__(self):
        self.process = None

    def start(self):
        if self.process is not None:
            return
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        self.output = tempfile.TemporaryFile("w+")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "tests/cuda/test_sim.py", "-q", "-p",
             "no:cacheprovider"], cwd=ROOT, env=env, stdout=self.output,
            stderr=subprocess.STDOUT, text=True)

    def result(self):
        """(return code, output), waiting at most until DEADLINE_S after the start."""
        if self.process is None:
            self.start()
        try:
            code = self.process.wait(max(0.0, self.started + DEADLINE_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = f"killed after {DEADLINE_S} s"
        self.output.seek(0)
        output = self.output.read()
        self.stop()
        return code, output

    def stop(self):
        """The process killed if it still runs, its output closed."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.output.close()


SUITE = SimulatorSuite()


@pytest.mark.runs_beside
def test_cuda_kernels_in_the_simulator():
    code, output = SUITE.result()
    assert code == 0, output
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
