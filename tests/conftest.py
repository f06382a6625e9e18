"""Fixtures for every test: outputs poisoned before kernels write them."""

import numpy as np
import pytest

import fastconv.cpu


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every array a CPU kernel writes starts as NaN, so a cell it forgets to write shows."""
    def poisoned(shape, dtype, slot=0):
        return np.full(shape, np.nan, dtype)
    monkeypatch.setattr(fastconv.cpu, "_empty", poisoned)
    monkeypatch.setattr(fastconv.cpu, "_workspace", poisoned)
