"""Threads and the OpenMP wait policy fastconv sets up."""

import os
import subprocess
import sys

import pytest

import fastconv


def _policy_after_import(env):
    code = "import os, fastconv; print(os.environ['OMP_WAIT_POLICY'])"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return run.stdout.strip()


def test_openmp_waits_passively_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_after_import(env) == "PASSIVE"
    assert _policy_after_import({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_set_num_threads_sets_numba_and_blas():
    import threadpoolctl
    before = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        assert fastconv.get_num_threads() == 1
        assert all(lib["num_threads"] == 1 for lib in threadpoolctl.threadpool_info()
                   if lib["user_api"] == "blas")
    finally:
        fastconv.set_num_threads(before)
        threadpoolctl.threadpool_limits(None)


@pytest.mark.parametrize("bad", [0, -1, 10**6, 1.5, True, "2"])
def test_set_num_threads_refuses_bad_counts(bad):
    with pytest.raises(ValueError, match="n must be an int"):
        fastconv.set_num_threads(bad)


def _run(code, **env):
    base = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


def test_an_openmp_runtime_loaded_first_moves_numba_to_its_workqueue_layer():
    layer = "import numba, fastconv; print(numba.config.THREADING_LAYER)"
    assert _run("import torch; " + layer) == "workqueue"
    assert _run(layer) == "default"
    assert _run("import torch; " + layer, NUMBA_THREADING_LAYER="omp") == "omp"


def test_concurrent_calls_from_threads_are_safe_on_the_workqueue_layer():
    code = """
import threading, numpy as np, numba
from fastconv import ops
x = np.random.default_rng(0).standard_normal((8, 3, 16, 16))
w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
want = ops.conv2d(x, w, algo="reference")
errors = []
def work():
    for _ in range(20):
        for algo in ("direct", "im2col"):
            errors.append(float(np.abs(ops.conv2d(x, w, algo=algo) - want).max()))
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(numba.threading_layer(), len(errors), max(errors) < 1e-12)
"""
    assert _run(code, NUMBA_THREADING_LAYER="workqueue") == "workqueue 160 True"


def test_importing_fastconv_after_torch_warns_unless_the_wait_policy_was_chosen():
    code = "import torch, fastconv"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                             "NUMBA_THREADING_LAYER")}
    warned = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True).stderr
    assert "imported after a library that started OpenMP" in warned
    assert "OMP_WAIT_POLICY=PASSIVE" in warned
    quiet = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "PASSIVE"},
                           capture_output=True, text=True, check=True).stderr
    assert "started OpenMP" not in quiet
    fine = subprocess.run([sys.executable, "-c", "import fastconv, torch"], env=env,
                          capture_output=True, text=True, check=True).stderr
    assert "started OpenMP" not in fine
