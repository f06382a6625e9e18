"""The scripts in examples/ run: an epoch or two on a few hundred Fashion-MNIST images each."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the example scripts train, each in its own process

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICK = ["--epochs", "1", "--limit", "256", "--batch-size", "32"]
COMMANDS = {
    "train_converted_lenet": [str(EXAMPLES / "train_converted_lenet.py")],
    "ddp_train spawned": [str(EXAMPLES / "ddp_train.py"), "--nproc", "2"],
    "ddp_train under torchrun": ["-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node", "2", str(EXAMPLES / "ddp_train.py")],
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_example_trains_an_epoch(command, data_root):
    # faulthandler: a process that dies on a signal prints every thread's Python stack
    done = subprocess.run([sys.executable, *command, *QUICK, "--data", data_root],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^epoch 1: [\d.]+ s, train loss [\d.]+.*test accuracy 0\.\d{4}$",
                     done.stdout, re.M), done.stdout


def test_autoencoder_learns_and_draws(data_root, tmp_path):
    """Two epochs on 256 images: the training loss falls from the first epoch to the second,
    the test loss ends below the untrained net's (epoch 0), and the PNG is written."""
    out = tmp_path / "reconstructions.png"
    done = subprocess.run([sys.executable, str(EXAMPLES / "autoencoder.py"), "--epochs", "2",
                           "--limit", "256", "--batch-size", "32", "--data", data_root,
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    untrained = re.findall(r"^epoch 0: untrained, test loss (0\.\d{4})$", done.stdout, re.M)
    epochs = re.findall(r"^epoch [12]: [\d.]+ s, train loss (0\.\d{4}), test loss (0\.\d{4})$",
                        done.stdout, re.M)
    assert len(untrained) == 1 and len(epochs) == 2, done.stdout
    (first, _), (second, tested) = epochs
    assert float(second) < float(first) and float(tested) < float(untrained[0]), done.stdout
    png = out.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
