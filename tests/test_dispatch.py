"""The registry, and which implementation actually runs: explicit algo=, the heuristic behind
algo="auto", and the autotuning cache (its file format, reuse, recovery and atomic writes).

Every test spies on the registry itself, so "ran" means the function was called, not that a
selector returned its name.
"""

import concurrent.futures
import errno
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import dispatch, geometry, ops, registry
from fastconv.implementations import conv2d, driver
from fastconv.kernels import VECTOR_LANES

CONV_OPS = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")
SINGLE_OPS = ("conv2d_backward_bias", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
              "avg_pool2d_backward")
CPU_ALGOS = {"reference", "direct", "im2col", "blocked", "depthwise", "winograd", "grouped"}
# what autotuning times (on THIN, NCHW, all apply but "grouped", for NHWC layers)
CANDIDATES = sorted(CPU_ALGOS - {"reference", "grouped"})
GENERAL = sorted(registry.general("cpu"))  # the algos that serve every layer and op
# Ops an algo has no implementation of (registry.refusal names them).
MISSING = {"conv2d_backward_weight": {"winograd"}}

# (x_shape, w_shape, groups) in NCHW/OIHW
WIDE = ((1, 8, 6, 6), (16, 8, 3, 3), 1)        # 72 taps, 16 filters: a GEMM worth BLAS
THIN = ((1, 1, 6, 6), (2, 1, 3, 3), 1)         # 9 taps (LeNet-like first layer)
DEPTHWISE = ((1, 16, 6, 6), (16, 1, 3, 3), 16)  # 9 taps per group
# A planted rule (in place of the fitted one) and what it picks for each case.
PLANTED = {"feature": "taps", "threshold": 50, "below": {
    "feature": "groups", "threshold": 2, "below": "im2col", "at_least": "direct"},
    "at_least": "blocked"}
PICKS = [(WIDE, "blocked"), (THIN, "im2col"), (DEPTHWISE, "direct")]


def _layout(shape, data_format, weight=False):
    if data_format == "NCHW":
        return shape
    return (shape[2], shape[3], shape[1], shape[0]) if weight else (
        shape[0], shape[2], shape[3], shape[1])


def call(op, case=THIN, algo="auto", data_format="NCHW", seed=0):
    """Run conv op ``op`` on random data of geometry ``case``; returns its output."""
    x_shape, w_shape, groups = case
    x_shape, w_shape = _layout(x_shape, data_format), _layout(w_shape, data_format, weight=True)
    g = geometry.conv_geometry(x_shape, w_shape, 1, 1, 1, groups, data_format)
    rng = np.random.default_rng(seed)
    x, w, gy = (rng.standard_normal(s) for s in (x_shape, w_shape, g.y_shape))
    common = dict(padding=1, groups=groups, data_format=data_format, algo=algo)
    if op == "conv2d":
        return ops.conv2d(x, w, **common)
    if op == "conv2d_backward_input":
        return ops.conv2d_backward_input(gy, w, x_shape, **common)
    return ops.conv2d_backward_weight(gy, x, w_shape, **common)


def call_single(op, data_format="NCHW"):
    """Run one of the ops that have a single non-reference implementation."""
    x = np.random.default_rng(0).standard_normal(_layout((1, 2, 4, 4), data_format))
    y = ops.max_pool2d(x, 2, data_format=data_format)
    return {
        "conv2d_backward_bias": lambda: ops.conv2d_backward_bias(x, data_format=data_format),
        "max_pool2d": lambda: ops.max_pool2d(x, 2, data_format=data_format),
        "max_pool2d_backward": lambda: ops.max_pool2d_backward(y, x, 2, data_format=data_format),
        "avg_pool2d": lambda: ops.avg_pool2d(x, 2, data_format=data_format),
        "avg_pool2d_backward": lambda: ops.avg_pool2d_backward(y, x.shape, 2,
                                                               data_format=data_format),
    }[op]()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test reads or writes the user's cache, and autotuning starts off whatever the env."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(cache))
    monkeypatch.delenv("FASTCONV_AUTOTUNE", raising=False)
    monkeypatch.setattr(dispatch, "_autotune", False)
    return cache


@pytest.fixture
def tuning(isolated):
    """Autotuning on through the public switch; the path of the cache file."""
    fastconv.autotune(True)
    yield isolated / "autotune.json"
    fastconv.autotune(False)


@pytest.fixture
def ran(monkeypatch):
    """Wrap every registered implementation; the list of (op, algo) that were called."""
    calls = []

    def spy(op, algo, fn):
        def wrapper(*args, **kwargs):
            calls.append((op, algo))
            return fn(*args, **kwargs)
        return wrapper

    for (op, device), algos in list(registry._implementations.items()):
        monkeypatch.setitem(registry._implementations, (op, device),
                            {algo: spy(op, algo, fn) for algo, fn in algos.items()})
    return calls


def _algo_of(fn):
    return next(a for algos in registry._implementations.values() for a, f in algos.items()
                if f is fn)


@pytest.fixture
def timed(monkeypatch):
    """Spy on dispatch._time: the list of algos timed, each really timed by the original."""
    algos, real = [], dispatch._time

    def spy(fn, run, *args, **kwargs):
        algos.append(_algo_of(fn))
        return real(fn, run, *args, **kwargs)

    monkeypatch.setattr(dispatch, "_time", spy)
    return algos


def fake_times(monkeypatch, times):
    """Replace dispatch._time with fixed times per algo, 9 s for an algo ``times`` does not name
    (nothing runs); the list of algos timed."""
    algos = []

    def fake(fn, run, *args, **kwargs):
        algos.append(_algo_of(fn))
        return times.get(algos[-1], 9.0)

    monkeypatch.setattr(dispatch, "_time", fake)
    return algos


def no_timing(monkeypatch):
    def fail(fn, run, *args, **kwargs):
        raise AssertionError(f"{_algo_of(fn)} was timed again")
    monkeypatch.setattr(dispatch, "_time", fail)


def read_cache(path):
    data = json.loads(path.read_text())
    assert data["format"] == dispatch.CACHE_FORMAT
    assert set(data) == {"format", "entries"}
    assert all(isinstance(v, str) for v in data["entries"].values())
    return data["entries"]


def signature(case=THIN):
    x_shape, w_shape, groups = case
    return geometry.conv_geometry(x_shape, w_shape, 1, 1, 1, groups, "NCHW").key()


# --- the registry -----------------------------------------------------------------------------

def test_cpu_algorithms():
    algos = fastconv.algorithms("cpu")
    assert set(algos) == CPU_ALGOS and len(algos) == len(CPU_ALGOS)
    assert fastconv.ops.algorithms("cpu") == algos == dispatch.algorithms()


@pytest.mark.parametrize("op", CONV_OPS)
def test_conv_ops_have_every_algorithm(op):
    impls = dispatch.implementations(op, "cpu")
    assert set(impls) == set(fastconv.algorithms("cpu")) - MISSING.get(op, set())
    assert all(callable(fn) for fn in impls.values())
    assert registry._heuristics[(op, "cpu")] is conv2d.choose_cpu


@pytest.mark.parametrize("op", SINGLE_OPS)
def test_single_ops_have_numba_and_reference(op):
    assert set(dispatch.implementations(op, "cpu")) == {"numba", "reference"}



# --- which implementation runs ----------------------------------------------------------------

@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", GENERAL)
@pytest.mark.parametrize("op", CONV_OPS)
def test_explicit_algo_runs_exactly_that_implementation(op, algo, data_format, ran):
    call(op, WIDE, algo=algo, data_format=data_format)  # WIDE: the heuristic would say im2col
    assert ran == [(op, algo)]


@pytest.mark.parametrize("algo", GENERAL)
def test_explicit_algo_is_not_autotuned(algo, tuning, ran, monkeypatch):
    no_timing(monkeypatch)
    call("conv2d", algo=algo)
    assert ran == [("conv2d", algo)]
    assert not tuning.exists()


@pytest.mark.parametrize("case, expected", PICKS, ids=[f"{c[1]}g{c[2]}" for c, _ in PICKS])
@pytest.mark.parametrize("op", CONV_OPS)
def test_auto_follows_the_cpu_rule(op, case, expected, ran, monkeypatch):
    if case is DEPTHWISE:
        expected = "depthwise"  # taken before the rule: a structural choice (conv2d.py)
    monkeypatch.setitem(conv2d.CPU_RULE, op, PLANTED)
    monkeypatch.setattr(dispatch, "_picked", {})  # the fitted rule's picks, kept per layer
    x_shape, w_shape, groups = case
    g = geometry.conv_geometry(x_shape, w_shape, 1, 1, 1, groups, "NCHW")
    assert registry.choose(op, "cpu", g) == expected
    call(op, case)
    assert ran == [(op, expected)]


GROUPED = ((1, 4, 6, 6), (4, 2, 3, 3), 2)


@pytest.mark.parametrize("planted, case, nhwc", [
    ("direct", THIN, "blocked"), ("direct", GROUPED, "blocked"), ("im2col", THIN, "im2col"),
    ("im2col", GROUPED, "blocked")])
@pytest.mark.parametrize("op", CONV_OPS)
def test_an_nhwc_layer_the_rule_sends_to_an_nchw_kernel_takes_blocked(op, planted, case, nhwc,
                                                                      ran, monkeypatch):
    """direct's register tiles and im2col's grouped GEMMs serve NCHW only: the rule, fitted on
    NCHW layers, is followed there and overridden for NHWC."""
    monkeypatch.setitem(conv2d.CPU_RULE, op, planted)
    monkeypatch.setattr(dispatch, "_picked", {})
    for data_format, expected in (("NCHW", planted), ("NHWC", nhwc)):
        call(op, case, data_format=data_format)
        assert ran[-1] == (op, expected)


@pytest.mark.parametrize("op", CONV_OPS)
def test_a_wide_nhwc_layer_the_rule_sends_to_im2col_takes_blocked_but_its_weight_gradient(
        op, monkeypatch):
    """im2col's columns are channel-major, a transpose of NHWC's pixels: an NHWC layer of
    NHWC_BLOCKED_MIN_CHANNELS input channels the rule sends to im2col takes blocked for its
    forward and input gradient, at stride 1 and 2; one channel fewer, a 3-channel stem, a
    weight gradient, and a layer whose window covers the image (its columns x as it lies)
    stay im2col's."""
    monkeypatch.setitem(conv2d.CPU_RULE, op, "im2col")
    wide = conv2d.NHWC_BLOCKED_MIN_CHANNELS
    moved = "im2col" if op == "conv2d_backward_weight" else "blocked"
    for c, size, stride, padding, expected in ((wide, 28, 2, 1, moved), (wide, 14, 1, 1, moved),
                                               (wide - 1, 28, 2, 1, "im2col"),
                                               (3, 56, 2, 1, "im2col"), (wide, 3, 1, 0, "im2col")):
        g = geometry.conv_geometry((8, size, size, c), (3, 3, c, 128), stride, padding, 1, 1,
                                   "NHWC")
        assert registry.choose(op, "cpu", g) == expected, (c, size, stride)
        nchw = geometry.conv_geometry((8, c, size, size), (128, c, 3, 3), stride, padding, 1, 1,
                                      "NCHW")
        assert registry.choose(op, "cpu", nchw) == "im2col"


@pytest.mark.parametrize("planted", ["direct", "blocked", "im2col"])
@pytest.mark.parametrize("op", CONV_OPS)
def test_a_1x1_nhwc_layer_takes_im2col(op, planted, monkeypatch):
    """Overridden for a 1x1 unpadded NHWC layer of one group only (MobileNet's projections,
    ResNet's bottlenecks and downsampling), for all three ops: a GEMM over x's pixels as they
    lie (a strided layer's gathered)."""
    monkeypatch.setitem(conv2d.CPU_RULE, op, planted)
    for data_format, stride, padding, groups, expected in (
            ("NCHW", 2, 0, 1, planted), ("NHWC", 2, 0, 1, "im2col"),
            ("NHWC", (1, 2), 0, 1, "im2col"), ("NHWC", 1, 0, 1, "im2col"),
            ("NHWC", 1, 1, 1, "blocked" if planted == "direct" or planted == "im2col"
             and op != "conv2d_backward_weight" else planted),  # padded: _columns_transposed
            ("NHWC", 2, 0, 2, "blocked" if planted != "blocked" else planted)):
        x_shape = _layout((8, 64, 28, 28), data_format)
        w_shape = _layout((128, 64 // groups, 1, 1), data_format, weight=True)
        g = geometry.conv_geometry(x_shape, w_shape, stride, padding, 1, groups, data_format)
        assert registry.choose(op, "cpu", g) == expected, (data_format, stride, padding, groups)


@pytest.mark.parametrize("c, k, stride, weight", [
    (VECTOR_LANES, 96, 1, "blocked"), (64, 2 * VECTOR_LANES, 2, "blocked"),
    (2 * VECTOR_LANES, 2 * VECTOR_LANES, 1, "im2col"), (24, 96, 1, "im2col"),
    (96, 64, 1, "im2col")])
@pytest.mark.parametrize("op", CONV_OPS)
def test_a_1x1_nhwc_weight_gradient_of_a_tiles_width_takes_blocked(op, c, k, stride, weight):
    """...but for the weight gradient of one whose fewer channels (unequal sides) are a
    register tile's width (MobileNetV2's 16- and 32-channel sides): blocked, which reads both
    operands as they lie; its forward and input gradient stay GEMMs. (Equal sides of two
    vectors.)"""
    g = geometry.conv_geometry((8, 28, 28, c), (1, 1, c, k), stride, 0, 1, 1, "NHWC")
    expected = weight if op == "conv2d_backward_weight" else "im2col"
    assert registry.choose(op, "cpu", g) == expected


def test_auto_asks_the_heuristic_once_per_layer_and_thread_count(ran, monkeypatch):
    """The heuristic's pick is kept per (op, device, geometry, threads): asked again only for a
    new layer or thread count, and what runs is the registry's current entry of that name."""
    monkeypatch.setattr(dispatch, "_picked", {})
    asked = []
    monkeypatch.setattr(dispatch, "choose",
                        lambda op, device, g: asked.append(g) or registry.choose(op, device, g))
    monkeypatch.setattr(fastconv.runtime, "get_num_threads", lambda: 1)
    for case in (WIDE, WIDE, THIN, WIDE):
        call("conv2d", case)
    assert [(g.C, g.K) for g in asked] == [(8, 16), (1, 2)]
    assert len(ran) == 4 and ran[0] == ran[1] == ran[3]
    monkeypatch.setattr(fastconv.runtime, "get_num_threads", lambda: 2)
    call("conv2d", WIDE)
    assert len(asked) == 3


def test_auto_forgets_its_picks_past_the_limit(monkeypatch):
    monkeypatch.setattr(dispatch, "_picked", {})
    monkeypatch.setattr(dispatch, "PICKED_KEPT", 2)
    for case in (WIDE, THIN, DEPTHWISE):
        call("conv2d", case)
    assert len(dispatch._picked) == 1  # the third layer's, after the first two were dropped


@pytest.mark.parametrize("op", CONV_OPS)
def test_the_cpu_rule_names_registered_algorithms(op):
    """Every leaf of the fitted rule is an algorithm auto may pick, or a list of them whose last
    serves every layer; every test a feature."""
    general = set(registry.general("cpu"))

    def leaves(node):
        if isinstance(node, str):
            return {node}
        if isinstance(node, list):
            assert node[-1] in general, node
            return set(node)
        assert node["feature"] in conv2d.FEATURES and node["threshold"] > 0
        return leaves(node["below"]) | leaves(node["at_least"])
    assert leaves(conv2d.CPU_RULE[op]) <= CPU_ALGOS - {"reference"}


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 64), st.integers(1, 64), st.integers(1, 7),
       st.integers(1, 7), st.sampled_from(["NCHW", "NHWC"]))
def test_heuristic_never_picks_reference(groups, cg, kg, r, s, data_format):
    x_shape = _layout((1, cg * groups, 8, 8), data_format)
    w_shape = _layout((kg * groups, cg, r, s), data_format, weight=True)
    g = geometry.conv_geometry(x_shape, w_shape, 1, "same", 1, groups, data_format)
    for op in CONV_OPS:
        assert registry.choose(op, "cpu", g) in CPU_ALGOS - {"reference"}


@pytest.mark.parametrize("autotune", [False, True], ids=["heuristic", "autotune"])
@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
@pytest.mark.parametrize("op", SINGLE_OPS)
def test_single_ops_run_numba_without_timing(op, data_format, autotune, ran, monkeypatch):
    fastconv.autotune(autotune)
    no_timing(monkeypatch)
    call_single(op, data_format)
    assert ran[-1] == (op, "numba")
    assert "reference" not in {a for o, a in ran if o == op}


# --- autotuning -------------------------------------------------------------------------------

def test_first_call_times_candidates_and_writes_the_cache(tuning, timed, ran):
    call("conv2d")
    assert sorted(timed) == CANDIDATES  # every candidate, never "reference"
    entries = read_cache(tuning)
    [(key, winner)] = entries.items()
    assert signature() in key and "conv2d" in key and "float64" in key
    assert winner in CANDIDATES
    assert ran[-1] == ("conv2d", winner)  # the call's own result comes from the winner
    # no temp file left behind (numba/ holds the serial twins first compiled in this test)
    assert [f for f in os.listdir(tuning.parent) if f != "numba"] == ["autotune.json"]


@pytest.mark.parametrize("fastest", ["direct", "im2col"])
def test_second_call_reuses_the_winner(fastest, tuning, ran, monkeypatch):
    slowest = ({"direct", "im2col"} - {fastest}).pop()
    timed = fake_times(monkeypatch, {fastest: 1.0, slowest: 2.0})
    first = call("conv2d")
    assert sorted(timed) == CANDIDATES
    assert ran == [("conv2d", fastest)] and list(read_cache(tuning).values()) == [fastest]
    no_timing(monkeypatch)
    ran.clear()
    np.testing.assert_allclose(call("conv2d"), first)
    assert ran == [("conv2d", fastest)]


@pytest.mark.parametrize("planted", ["direct", "im2col"])
def test_a_cached_entry_decides(planted, tuning, ran, monkeypatch):
    fake_times(monkeypatch, {"direct": 1.0, "im2col": 1.0})
    call("conv2d_backward_input")
    [key] = read_cache(tuning)
    tuning.write_text(json.dumps({"format": dispatch.CACHE_FORMAT, "entries": {key: planted}}))
    dispatch._choices.clear()  # a new process: it knows only the file
    no_timing(monkeypatch)
    ran.clear()
    call("conv2d_backward_input")
    assert ran == [("conv2d_backward_input", planted)]


def test_each_shape_and_op_gets_its_own_entry(tuning, ran, monkeypatch):
    fake_times(monkeypatch, {"direct": 1.0, "im2col": 2.0})
    call("conv2d")
    first = read_cache(tuning)
    call("conv2d", WIDE)
    second = read_cache(tuning)
    assert len(second) == 2 and first.items() <= second.items()
    [new_key] = set(second) - set(first)
    assert signature(WIDE) in new_key
    call("conv2d_backward_weight", WIDE)
    third = read_cache(tuning)
    assert len(third) == 3 and second.items() <= third.items()


@pytest.mark.parametrize("value, on", [("1", True), ("true", True), ("yes", True),
                                       ("0", False), ("", False), ("false", False),
                                       ("no", False)])
def test_env_var_turns_autotuning_on(value, on, monkeypatch, isolated):
    monkeypatch.setattr(dispatch, "_autotune", None)
    monkeypatch.setenv("FASTCONV_AUTOTUNE", value)
    assert dispatch.autotuning() is on
    fake_times(monkeypatch, {"direct": 1.0, "im2col": 2.0})
    call("conv2d")
    assert (isolated / "autotune.json").exists() is on
    fastconv.autotune(False)  # the switch wins over the environment
    assert not dispatch.autotuning()


def test_cache_dir_is_created(tmp_path, monkeypatch, tuning):
    deep = tmp_path / "a" / "b"
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(deep))
    assert dispatch.cache_path() == deep / "autotune.json"
    fake_times(monkeypatch, {"direct": 1.0, "im2col": 2.0})
    call("conv2d")
    assert len(read_cache(deep / "autotune.json")) == 1


BAD_FILES = {
    "garbage-bytes": b"\xff\xfe\x00\x9c not json at all",
    "truncated-json": b'{"format": "fastconv-autotune/1", "entries": {"a',
    "empty": b"",
    "other-format": json.dumps({"format": "other", "entries": {}}).encode(),
    "list": json.dumps([1, 2]).encode(),
    "entries-a-list": json.dumps({"format": "fastconv-autotune/1", "entries": []}).encode(),
    "entry-not-a-string": json.dumps({"format": "fastconv-autotune/1",
                                      "entries": {"k": 3}}).encode(),
}


@pytest.mark.parametrize("content", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_cache_file_is_ignored_with_a_warning_and_rewritten(content, tuning, ran,
                                                                   monkeypatch):
    tuning.parent.mkdir(parents=True)
    tuning.write_bytes(content)
    timed = fake_times(monkeypatch, {"direct": 2.0, "im2col": 1.0})
    with pytest.warns(UserWarning, match="autotune cache"):
        call("conv2d")
    assert sorted(timed) == CANDIDATES
    assert ran == [("conv2d", "im2col")]
    assert list(read_cache(tuning).values()) == ["im2col"]


@pytest.mark.parametrize("stale", ["fft", "reference", ""])
def test_an_entry_naming_an_unknown_algo_is_ignored(stale, tuning, ran, monkeypatch):
    fake_times(monkeypatch, {"direct": 1.0, "im2col": 2.0})
    call("conv2d")
    [key] = read_cache(tuning)
    tuning.write_text(json.dumps({"format": dispatch.CACHE_FORMAT,
                                  "entries": {key: stale, "other|key": "direct"}}))
    dispatch._choices.clear()  # a new process: it knows only the file
    timed = fake_times(monkeypatch, {"direct": 2.0, "im2col": 1.0})
    ran.clear()
    call("conv2d")
    assert sorted(timed) == CANDIDATES
    assert ran == [("conv2d", "im2col")]
    assert read_cache(tuning) == {key: "im2col", "other|key": "direct"}


def test_writes_leave_no_temp_files(tuning, monkeypatch):
    fake_times(monkeypatch, {"direct": 1.0, "im2col": 2.0})
    for case in (THIN, WIDE, DEPTHWISE):
        call("conv2d", case)
        # a kernel first compiled in this process caches itself in the same folder ("numba",
        # kernels/__init__.py's locator): the autotuner's writes are the rest
        assert sorted(set(os.listdir(tuning.parent)) - {"numba"}) == ["autotune.json"]
    assert len(read_cache(tuning)) == 3


def test_an_unwritable_cache_costs_no_retiming_and_warns_once(tuning, ran, monkeypatch):
    """A read-only or full disk: the choice is kept in memory, so later calls neither time the
    candidates again nor warn again (root ignores chmod here, so the OSError is injected)."""
    def read_only(path, entries):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(dispatch, "_store_cache", read_only)
    fake_times(monkeypatch, {"direct": 2.0, "im2col": 1.0})
    with pytest.warns(UserWarning, match="Read-only file system"):
        call("conv2d")
    no_timing(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            call("conv2d")
    assert ran == [("conv2d", "im2col")] * 4


def test_concurrent_writers_keep_each_others_entries(tuning):
    """Each writer merges its entries into the file under the folder's lock."""
    def write(i):
        dispatch._store_cache(tuning, {f"key{i}": "direct"})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(64)))
    assert read_cache(tuning) == {f"key{i}": "direct" for i in range(64)}
    assert os.listdir(tuning.parent) == ["autotune.json"]


def test_a_failed_write_keeps_the_old_file(tuning, monkeypatch):
    fake_times(monkeypatch, {"direct": 1.0, "im2col": 2.0})
    call("conv2d")
    before, real_dump, broken = tuning.read_bytes(), json.dump, []

    def broken_dump(obj, f, **kwargs):
        broken.append(obj)
        f.write('{"format": "fastconv-autotune/1", "entr')  # half a file, then the disk fills
        f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dispatch.json, "dump", broken_dump)
    with pytest.warns(UserWarning, match="No space left"):
        call("conv2d", WIDE)
    assert broken, "the cache was not written"
    assert tuning.read_bytes() == before
    assert os.listdir(tuning.parent) == ["autotune.json"]
    monkeypatch.setattr(dispatch.json, "dump", real_dump)
    call("conv2d", DEPTHWISE)  # the next write keeps the choice the failed one could not
    assert len(read_cache(tuning)) == 3


def test_an_unwritable_cache_does_not_break_the_op(tmp_path, monkeypatch, tuning, ran):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(blocker / "cache"))
    fake_times(monkeypatch, {"direct": 2.0, "im2col": 1.0})
    with pytest.warns(UserWarning, match="autotune cache"):
        call("conv2d")
    assert ran == [("conv2d", "im2col")]


# --- one thread or the pool ---------------------------------------------------------------------

@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_serial_and_parallel_kernels_agree(data_format, monkeypatch):
    """Every CPU kernel gives the same result in the calling thread (small calls) and on the
    thread pool: the same case is run with everything serial, then everything parallel."""
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal((3, 4, 9, 8)), rng.standard_normal((6, 2, 3, 3))
    if data_format == "NHWC":
        x, w = x.transpose(0, 2, 3, 1).copy(), w.transpose(2, 3, 1, 0).copy()
    conv = dict(stride=(2, 1), padding=1, groups=2, data_format=data_format)
    pool = dict(kernel_size=3, stride=2, padding=1, data_format=data_format)

    algos = [a for a in GENERAL if a != "reference"]  # strided: the general ones serve it

    def every_kernel():
        y = {f"conv2d {algo}": ops.conv2d(x, w, rng.standard_normal(6), activation="tanh",
                                         algo=algo, **conv)
             for algo in algos}
        gy = np.ones_like(y["conv2d direct"])
        for algo in algos:
            grads = ops.conv2d_backward(gy, x, w, algo=algo, **conv)
            y.update({f"grad {i} {algo}": g for i, g in enumerate(grads)})
        for op in ("max_pool2d", "avg_pool2d"):
            y[op] = getattr(ops, op)(x, **pool)
        y["max back"] = ops.max_pool2d_backward(np.ones_like(y["max_pool2d"]), x, **pool)
        y["avg back"] = ops.avg_pool2d_backward(np.ones_like(y["avg_pool2d"]), x.shape, **pool)
        return y

    results = {}
    for serial_below in (2**62, 0):
        monkeypatch.setattr(driver, "SERIAL_WORK", serial_below)
        rng = np.random.default_rng(12)
        results[serial_below] = every_kernel()
    for name, serial in results[2**62].items():
        np.testing.assert_allclose(results[0][name], serial, rtol=1e-12, atol=1e-12,
                                   err_msg=name)


_AUTOTUNE_20_SHAPES = """
import sys, numpy as np, fastconv
fastconv.autotune(True)
for h in range(int(sys.argv[1]), int(sys.argv[1]) + 20):
    fastconv.ops.conv2d(np.ones((1, 2, h, 5), np.float32), np.ones((3, 2, 3, 3), np.float32))
"""


@pytest.mark.slow
def test_two_processes_autotuning_into_one_folder_lose_no_entries(isolated):
    env = {**os.environ, "FASTCONV_CACHE_DIR": str(isolated)}
    runs = [subprocess.Popen([sys.executable, "-c", _AUTOTUNE_20_SHAPES, str(start)], env=env)
            for start in (5, 40)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    assert len(read_cache(isolated / "autotune.json")) == 40
