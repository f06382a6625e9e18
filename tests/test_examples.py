"""The scripts in examples/ run: one epoch on a few hundred Fashion-MNIST images each."""

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
    done = subprocess.run([sys.executable, *command, *QUICK, "--data", data_root],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^epoch 1: [\d.]+ s, train loss [\d.]+.*test accuracy 0\.\d{4}$",
                     done.stdout, re.M), done.stdout
