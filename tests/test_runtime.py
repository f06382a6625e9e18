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
