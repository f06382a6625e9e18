"""The benchmark scripts run: benchmarks/compare_training.py as a smoke run on a few hundred
images, each framework in its own process (as the script is meant to be used), from the same
weights and batches; benchmarks/profile_step.py on a few steps; benchmarks/host_overhead.py;
benchmarks/other_layers.py, whose every layer's results must match PyTorch's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from other_layers import LAYERS

pytestmark = pytest.mark.slow  # trains in subprocesses

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_training.py"


def _epoch(framework, data_root, model="lenet5"):
    done = subprocess.run([sys.executable, str(SCRIPT), "--framework", framework, "--limit",
                           "512", "--epochs", "1", "--threads", "1", "--data", data_root,
                           "--model", model],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = re.search(rf"^epoch 1: {framework} [\d.]+ s \(\d+ img/s, test acc (0\.\d{{4}})\)$",
                     done.stdout, re.M)
    assert line, done.stdout
    return float(line.group(1))


@pytest.mark.parametrize("model", ["lenet5", "resnet8"])
def test_compare_training_trains_both_frameworks_alike(data_root, model):
    ours, theirs = _epoch("fastconv", data_root, model), _epoch("torch", data_root, model)
    # 8 steps of the model's recipe (Adam; SGD with a cosine schedule) from
    # PyTorch's initial weights on the same batches: the same network, so the same test
    # accuracy up to a few of the 512 images float rounding may flip
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    if model == "lenet5":  # a ResNet's running statistics are 8 batches old: no verdict yet
        assert ours > 0.2  # it learned: chance is 0.1


def test_profile_step_accounts_for_a_training_step():
    run = subprocess.run([sys.executable, str(SCRIPT.parent / "profile_step.py"), "--batch", "4",
                          "--steps", "3"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("LeNet-5 step, batch 4")
    labels = [line.split("|")[1].strip() for line in lines[3:]]
    assert labels[:2] == ["conv2d #1", "max_pool2d #1"] and "adam_step" in labels
    assert labels[-1].startswith("the rest")


@pytest.mark.parametrize("evict", [[], ["--evict", "1"]], ids=["hot", "evicted"])
def test_host_overhead_times_each_small_call(evict):
    """Each call's time and its host's share, and with --evict both again after 1 MB read."""
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "host_overhead.py"), "--calls",
                           "20", "--repeats", "1", *evict], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| (.+?) ((?:\| [\d.]+ )+)\|$", done.stdout, re.M)
    assert [name for name, _ in rows][0].startswith("conv2d") and len(rows) == 6, done.stdout
    times = [[float(t) for t in cells.split("|") if t.strip()] for _, cells in rows]
    assert all(len(t) == (4 if evict else 2) and min(t) > 0 for t in times), done.stdout


@pytest.mark.parametrize("networks, layers", [(None, len(LAYERS)), ("lenet5,resnext50", 8)])
def test_other_layers_match_torch_on_every_layer(networks, layers):
    """Its own layers, or a suite network's conv layers in NHWC (LeNet-5's three, ResNeXt's
    five grouped ones)."""
    done = subprocess.run([sys.executable, str(SCRIPT.parent / "other_layers.py"), "--threads",
                           "1", "--repeats", "1"] + (["--nhwc", networks] if networks else []),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = re.findall(r"^\| .+ \| ([\d.]+e[-+]\d+) \|$", done.stdout, re.M)
    assert len(errors) == layers, done.stdout
    assert all(float(e) < 1e-4 for e in errors), done.stdout
