"""Fixtures for every test: outputs poisoned before kernels write them, and the real data's
folder."""

import os
from pathlib import Path

import numpy as np
import pytest

import fastconv.cpu
from fastconv import device


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every array a CPU kernel writes starts as NaN, so a cell it forgets to write shows."""
    def poisoned(shape, dtype, slot=0):
        return np.full(shape, np.nan, dtype)
    monkeypatch.setattr(fastconv.cpu, "_empty", poisoned)
    monkeypatch.setattr(fastconv.cpu, "_workspace", poisoned)
    if device.simulated():  # the CUDA backend's arrays are NumPy arrays in the simulator
        monkeypatch.setattr(device.cuda_backend(), "_empty", poisoned)


@pytest.fixture(scope="module")
def data_root():
    """$FASTCONV_DATA where it holds fashion-mnist/; the tests that need it skip, saying why,
    without it."""
    root = os.environ.get("FASTCONV_DATA")
    if not root or not (Path(root) / "fashion-mnist").is_dir():
        pytest.skip(f"FASTCONV_DATA={root!r} has no fashion-mnist/ (CI points it at "
                    "../shared/data)")
    return root
