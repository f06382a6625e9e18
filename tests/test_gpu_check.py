"""benchmarks/gpu_check.sh --smoke: the GPU check script end to end in Numba's CUDA simulator,
as it must run before a real GPU's scarce minutes are spent on it: every step ends well, the
steps that need a real GPU say SKIPPED and why, and the result files are there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a shell script running the CLI in subprocesses

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_step(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke",
                          str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    summary = (tmp_path / "summary.md").read_text()
    assert run.returncode == 0, summary + run.stdout + (tmp_path / "steps.log").read_text()[-3000:]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    statuses = {row.split(" | ")[0][2:]: row.split(" | ")[1] for row in rows[1:]}
    assert statuses["GPU tests (pytest -m gpu), FASTCONV_CUDA_LAUNCH=direct"] == "ok"
    assert "the direct launch" not in statuses  # no fallback: its tests passed
    assert statuses["conv algorithms against cuDNN"] == "ok"
    assert statuses["GEMM against cuBLAS"].startswith("SKIPPED: cuBLAS needs a real GPU")
    assert statuses["host time of small calls"] == "ok"
    assert statuses["LeNet-5 training step on the GPU"] == "ok"
    assert statuses["CPU layer suite by threads"] == "ok"
    assert "the CUDA simulator is on" in (tmp_path / "tests.log").read_text()
    bench = (tmp_path / "bench-cuda.md").read_text()
    assert "| conv2d | lenet5/c3 | direct |" in bench and "| conv2d | lenet5/c3 | im2col |" in bench
    assert "| conv2d | lenet5/c1 | auto |" in (tmp_path / "cpu-threads.md").read_text()
    assert len(list(tmp_path.iterdir())) <= 8  # what the GPU machine's tool brings back


def test_failed_gpu_tests_send_the_later_steps_through_numba(tmp_path):
    """The direct launch is checked first; where its GPU tests fail, the steps after them
    launch through Numba's dispatcher, and the summary says so."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$*" in *pytest*) exit 1;; esac\nexec {sys.executable} '
                      '"$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(python), SKIP_STEPS="conv algorithms|host|LeNet|CPU")
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke",
                          str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    summary = (out / "summary.md").read_text()
    assert run.returncode != 0, summary
    assert "| GPU tests (pytest -m gpu), FASTCONV_CUDA_LAUNCH=direct | FAILED (1) |" in summary
    assert ("| the direct launch | SKIPPED: its GPU tests failed: the steps below launch "
            "through Numba |") in summary
