"""Threads and the OpenMP wait policy fastconv sets up."""

import os
import subprocess
import sys

import pytest

import fastconv
from fastconv import runtime


def _policy_after_import(env):
    code = ("import os, fastconv; "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return run.stdout.strip()


@pytest.mark.slow
def test_openmp_workers_spin_briefly_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    assert _policy_after_import(env) == "None 10000"
    assert _policy_after_import({**env, "OMP_WAIT_POLICY": "PASSIVE"}) == "PASSIVE None"
    assert _policy_after_import({**env, "GOMP_SPINCOUNT": "7"}) == "None 7"


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


@pytest.mark.slow
def test_an_openmp_runtime_loaded_first_moves_numba_to_its_workqueue_layer():
    layer = "import numba, fastconv; print(numba.config.THREADING_LAYER)"
    assert _run("import torch; " + layer) == "workqueue"
    assert _run(layer) == "default"
    assert _run("import torch; " + layer, NUMBA_THREADING_LAYER="omp") == "omp"


@pytest.mark.slow
def test_concurrent_calls_from_threads_are_safe_on_the_workqueue_layer():
    code = """
import threading, numpy as np, numba
from fastconv import ops
from fastconv.implementations import driver
driver.SERIAL_WORK = 0  # every call on the parallel kernels
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


@pytest.mark.slow
def test_importing_fastconv_after_torch_warns_unless_the_wait_policy_was_chosen():
    code = "import torch, fastconv"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
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


_FAULTS = """
import resource, numpy as np, fastconv
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round_trip():  # a step's worth of megabyte arrays, allocated, written, then freed
    batch = [np.ones(1 << 18, np.float32) for _ in range(4)]
    del batch
round_trip(); round_trip()  # the heap grows to its peak once
before = faults()
for _ in range(20):
    round_trip()
print(fastconv.runtime.MALLOC_TUNED, (faults() - before) / 20)
"""


def _page_faults_per_round(**env):
    base = {k: v for k, v in os.environ.items()
            if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "FASTCONV_MALLOC"))}
    run = subprocess.run([sys.executable, "-c", _FAULTS], env={**base, **env},
                         capture_output=True, text=True, check=True)
    tuned, faults = run.stdout.split()
    return tuned == "True", float(faults)


@pytest.mark.skipif(fastconv.runtime.platform.libc_ver()[0] != "glibc",
                    reason="fastconv tunes glibc's malloc only; this libc is not glibc")
@pytest.mark.slow
def test_freed_arrays_are_reused_without_page_faults_unless_opted_out():
    # glibc as it comes trims what is freed at the heap's top and faults it in again: all 4 MiB
    # of a round (992 faults) on one machine, half of them on CI's (480, 2026-12-05), as its
    # dynamic mmap threshold falls; with fastconv's thresholds the heap keeps it all
    assert _page_faults_per_round() == (True, pytest.approx(0, abs=5))
    tuned, faults = _page_faults_per_round(FASTCONV_MALLOC="0")
    assert not tuned and faults > 200
    assert _page_faults_per_round(MALLOC_TRIM_THRESHOLD_="131072")[0] is False


def test_set_num_threads_holds_in_every_thread(monkeypatch):
    """Numba's thread count is per thread: the kernels of an op called from another thread run
    on the count set_num_threads chose, not on Numba's default."""
    import threading

    import numba
    import numpy as np

    from fastconv import ops
    from fastconv.implementations import driver

    seen, real = [], driver.cpu_call

    def spy(kernel, work, *args):
        seen.append(numba.get_num_threads())
        return real(kernel, work, *args)
    monkeypatch.setattr(driver, "cpu_call", spy)
    before = fastconv.get_num_threads()
    fastconv.set_num_threads(1)
    try:
        worker = threading.Thread(target=ops.max_pool2d, args=(np.ones((1, 1, 4, 4)), 2))
        worker.start()
        worker.join()
    finally:
        fastconv.set_num_threads(before)
    assert seen == [1]


@pytest.mark.parametrize("info, intel", [({"vendor_id": "GenuineIntel"}, True),
                                         ({"vendor_id": "AuthenticAMD"}, False), ({}, False)])
def test_the_rules_vendor_feature_reads_cpuinfo(info, intel, monkeypatch):
    """The CPU rule's "intel" feature (a tree per vendor: conv2d.FEATURES) from /proc/cpuinfo's
    vendor_id; a machine that names none takes the others' trees."""
    monkeypatch.setattr(runtime, "_cpuinfo", lambda: info)
    assert runtime.intel_cpu() is intel
