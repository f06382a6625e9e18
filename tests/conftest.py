"""Fixtures for every test: outputs poisoned before kernels write them, the CPU kernel calls a
test makes, and the real data's folder."""

import os
from pathlib import Path

import pytest

from fastconv.implementations import driver


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every array a kernel writes, and the CPU's scratch, starts as NaN (an index array as -1),
    so a cell it forgets to write shows (on both devices: driver.empty takes the array module)."""
    import numpy as np

    def poisoned(xp, shape, dtype):
        return xp.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype)

    def poisoned_workspace(shape, dtype, slot=0):
        return np.full(shape, np.nan, dtype)
    monkeypatch.setattr(driver, "empty", poisoned)
    monkeypatch.setattr(driver, "workspace", poisoned_workspace)


@pytest.fixture
def cpu_calls(monkeypatch):
    """(kernel, work) of every CPU kernel call the test makes, in order: driver.cpu_call spied
    on, still running each kernel."""
    calls, real = [], driver.cpu_call

    def spy(kernel, work, *args):
        calls.append((kernel, work))
        return real(kernel, work, *args)
    monkeypatch.setattr(driver, "cpu_call", spy)
    return calls


@pytest.fixture(scope="module")
def data_root():
    """$FASTCONV_DATA where it holds fashion-mnist/; the tests that need it skip, saying why,
    without it."""
    root = os.environ.get("FASTCONV_DATA")
    if not root or not (Path(root) / "fashion-mnist").is_dir():
        pytest.skip(f"FASTCONV_DATA={root!r} has no fashion-mnist/ (CI points it at "
                    "../shared/data)")
    return root


def _runs_beside(items):
    """The collected tests whose work runs in a process of their module's SUITE, beside the
    other tests (the CUDA simulator suite's, tests/test_cuda_suite.py)."""
    return [item for item in items if item.get_closest_marker("runs_beside")]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """Those tests last: each reads its process's result, so it waits only for what is left."""
    items.sort(key=lambda item: item.get_closest_marker("runs_beside") is not None)


def pytest_collection_finish(session):
    """Their processes started once collection has chosen the tests that will run."""
    if not session.config.option.collectonly:
        for item in _runs_beside(session.items):
            item.module.SUITE.start()


def pytest_sessionfinish(session):
    """Their processes stopped if the session ends before the tests read them (-x, Ctrl-C)."""
    for item in _runs_beside(session.items):
        item.module.SUITE.stop()
