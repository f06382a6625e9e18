"""benchmarks/compare_training.py runs, as a smoke run on a few hundred images: each framework
in its own process (as the script is meant to be used), from the same weights and batches."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains both frameworks in subprocesses

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_training.py"


def _epoch(framework, data_root):
    done = subprocess.run([sys.executable, str(SCRIPT), "--framework", framework, "--limit",
                           "512", "--epochs", "1", "--threads", "1", "--data", data_root],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = re.search(rf"^epoch 1: {framework} [\d.]+ s \(\d+ img/s, test acc (0\.\d{{4}})\)$",
                     done.stdout, re.M)
    assert line, done.stdout
    return float(line.group(1))


def test_compare_training_trains_both_frameworks_alike(data_root):
    ours, theirs = _epoch("fastconv", data_root), _epoch("torch", data_root)
    # 8 Adam steps from PyTorch's initial weights on the same batches: the same network, so the
    # same test accuracy up to a few of the 512 images float rounding may flip
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    assert ours > 0.2  # it learned: chance is 0.1
