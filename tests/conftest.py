"""Fixtures for every test: outputs poisoned before kernels write them."""

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
