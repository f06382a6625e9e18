"""The fitted algo="auto" rule of the CPU (fastconv.bench.fit, benchmarks/fit_dispatch.py): the
fitter finds a rule planted in synthetic timings and ignores differences below its threshold,
and the committed rule is what fitting the committed measurements gives."""

import functools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastconv import geometry, ops, registry
from fastconv.bench import fit
from fastconv.implementations import conv2d, cpu_rule
from fastconv.registry import CONV_OPS

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "benchmarks" / "results" / "dispatch-cpu.csv"


def _rows(timings, lanes=16, threads=1):
    """Rows as fit.measure writes them, from {(taps, channels): {algo: ms}} for every op, on a
    machine whose tiles have ``lanes`` float32 lanes, on ``threads`` threads."""
    rows = []
    for (taps, channels), by_algo in timings.items():
        features = {name: 1 for name in conv2d.FEATURES} | {"taps": taps, "channels": channels,
                                                             "lanes": lanes, "threads": threads}
        for op in CONV_OPS:
            for algo, ms in by_algo.items():
                rows.append({"machine": f"m{lanes}", "threads": threads,
                             "layer": f"t{taps}c{channels}", "op": op, "algo": algo,
                             "median_ms": ms, **features})
    return rows


def test_fit_finds_a_planted_two_level_rule():
    # blocked wins from 100 taps on; below, direct wins with few channels, im2col with many
    timings = {}
    for taps in (9, 25, 60, 100, 150, 576):
        for channels in (6, 16, 64):
            fastest = "blocked" if taps >= 100 else "direct" if channels < 16 else "im2col"
            timings[(taps, channels)] = {a: 1.0 if a == fastest else 3.0
                                         for a in ("blocked", "direct", "im2col")}
    fitted = fit.fit(_rows(timings))
    for op in CONV_OPS:
        assert fitted["loss"][op]["rule"] == 1.0
        for (taps, channels), by_algo in timings.items():
            pick = conv2d.walk(fitted["rule"][op], {"taps": taps, "channels": channels}.get)
            assert by_algo[pick] == 1.0, (op, taps, channels, fitted["rule"][op])
        # and between the measured sizes
        for (taps, channels), expected in {(120, 8): "blocked", (30, 8): "direct",
                                           (30, 40): "im2col", (600, 40): "blocked"}.items():
            pick = conv2d.walk(fitted["rule"][op], {"taps": taps, "channels": channels}.get)
            assert pick == expected, (op, taps, channels, fitted["rule"][op])


def test_a_threshold_lies_between_the_measured_values_by_ratio():
    # im2col wins on 9 and 25 taps, blocked from 100 on: the split is at sqrt(25 * 100) = 50,
    # so 45 taps (nearer 25 by ratio) goes to im2col and 55 (nearer 100) to blocked
    timings = {(taps, 16): {"blocked": 1.0 if taps >= 100 else 3.0, "im2col": 2.0}
               for taps in (9, 25, 100, 576)}
    fitted = fit.fit(_rows(timings))
    for op in CONV_OPS:
        for taps, expected in ((45, "im2col"), (50, "blocked"), (55, "blocked")):
            pick = conv2d.walk(fitted["rule"][op], {"taps": taps, "channels": 16}.get)
            assert pick == expected, (op, taps, fitted["rule"][op])
    # neighbours: above the lower value always
    assert (fit._between(1.0, 2.0), fit._between(0.0, 1.0), fit._between(1.0, 7.0)) == (2, 1, 3)


def test_fit_does_not_split_on_noise():
    # im2col is 2% slower on some layers: below min_gain, one algorithm serves all
    timings = {(taps, 16): {"direct": 1.0, "im2col": 1.02 if taps > 50 else 0.99}
               for taps in (9, 25, 60, 100)}
    fitted = fit.fit(_rows(timings))
    assert fitted["rule"] == {op: "direct" for op in CONV_OPS}
    # direct loses 1% on two of the four layers: a geomean loss of sqrt(1 / 0.99)
    assert math.isclose(fitted["loss"]["conv2d"]["rule"], (1 / 0.99) ** 0.5, rel_tol=1e-9)


def test_each_vector_width_gets_its_own_tree():
    # AVX2's tiles lose to im2col below 100 taps, AVX-512's win everywhere; a tree over both
    # would spend a level on the width, a tree per width does not
    avx2 = {(taps, 16): {"blocked": 1.0 if taps >= 100 else 2.0, "im2col": 1.5}
            for taps in (9, 25, 60, 100, 150, 576)}
    avx512 = {key: {"blocked": 1.0, "im2col": 1.5} for key in avx2}
    fitted = fit.fit(_rows(avx2, lanes=8) + _rows(avx512, lanes=16))
    for op in CONV_OPS:
        rule = fitted["rule"][op]
        assert fitted["loss"][op]["rule"] == 1.0
        assert (rule["feature"], rule["threshold"], rule["at_least"]) == ("lanes", 16, "blocked")
        for lanes, timings in ((8, avx2), (16, avx512)):
            for (taps, channels), by_algo in timings.items():
                pick = conv2d.walk(rule, {"taps": taps, "channels": channels, "lanes": lanes}.get)
                assert by_algo[pick] == min(by_algo.values()), (op, lanes, taps, rule)
    # one width measured: no test of the width
    assert fit.fit(_rows(avx512))["rule"] == {op: "blocked" for op in CONV_OPS}


def test_a_forced_feature_gets_a_tree_per_value_where_they_differ():
    # on one thread im2col wins below 100 taps, on two blocked wins everywhere; forced, the
    # thread count gets a tree per value, the two-thread one serving every count above; equal
    # timings share one tree
    one = {(taps, 16): {"blocked": 1.0 if taps >= 100 else 2.0, "im2col": 1.5}
           for taps in (9, 25, 60, 100, 150, 576)}
    two = {key: {"blocked": 1.0, "im2col": 1.5} for key in one}
    forced = ("lanes", "threads")
    fitted = fit.fit(_rows(one, threads=1) + _rows(two, threads=2), forced=forced)
    for op in CONV_OPS:
        rule = fitted["rule"][op]
        assert fitted["loss"][op]["rule"] == 1.0
        assert (rule["feature"], rule["threshold"], rule["at_least"]) == ("threads", 2, "blocked")
        for threads, timings in ((1, one), (2, two), (16, two)):
            for (taps, channels), by_algo in timings.items():
                pick = conv2d.walk(rule, {"taps": taps, "channels": channels,
                                          "threads": threads}.get)
                assert by_algo[pick] == min(by_algo.values()), (op, threads, taps, rule)
    assert fit.fit(_rows(two, threads=1) + _rows(two, threads=2), forced=forced)["rule"] == {
        op: "blocked" for op in CONV_OPS}
    # unforced (the default), one tree over both finds the same split where it pays
    free = fit.fit(_rows(one, threads=1) + _rows(two, threads=2))
    assert "threads" not in fit.FORCED
    assert all(free["loss"][op]["rule"] == 1.0 for op in CONV_OPS)


@pytest.mark.parametrize("seed", range(5))
def test_a_depth_two_tree_is_the_best_of_every_split_tried_one_by_one(seed):
    # the fit's compiled stumps over sort orders carried down the tree, against every pair of
    # splits tried by brute force on random losses and features full of ties
    rng = np.random.default_rng(seed)
    features = rng.integers(0, 6, (40, len(conv2d.FEATURES))).astype(float)
    losses = rng.random((40, 3))
    leaf = functools.partial(fit._leaf, algos=["blocked", "direct", "im2col"],
                             served=registry.general("cpu"))

    def best(rows, depth):
        cost = losses[rows].sum(axis=0).min()
        if depth == 0:
            return cost
        for f in range(features.shape[1]):
            for t in np.unique(features[rows, f])[1:]:
                high = rows & (features[:, f] >= t)
                cost = min(cost, best(rows & ~high, depth - 1) + best(high, depth - 1))
        return cost

    loss, _ = fit._tree(features, losses, leaf, 2, 0.0)
    assert math.isclose(loss, best(np.ones(40, bool), 2), rel_tol=1e-12)


def test_the_committed_rule_is_the_fit_of_the_committed_measurements():
    if not MEASUREMENTS.exists():
        pytest.fail(f"{MEASUREMENTS} is missing: run benchmarks/fit_dispatch.py")
    assert fit.fit(fit.read_csv(MEASUREMENTS))["rule"] == cpu_rule.RULE


def test_the_script_measures_fits_and_writes(tmp_path):
    files = {name: tmp_path / name for name in ("m.csv", "rule.py", "table.md")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fit_dispatch.py"),
                          "--suite", "lenet5", "--quick", "--threads", "1", "--repeats", "1",
                          "--csv", files["m.csv"], "--rule", files["rule.py"],
                          "--markdown", files["table.md"]],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = fit.read_csv(files["m.csv"])
    assert {(r["layer"], r["op"]) for r in rows} == {
        (f"lenet5/{layer}", op) for layer in ("c1", "c3", "c5") for op in CONV_OPS}
    scope = {}
    exec(files["rule.py"].read_text(), scope)
    assert set(scope["RULE"]) == set(CONV_OPS)
    assert "| lenet5/c3 | conv2d |" in files["table.md"].read_text()


def test_a_leaf_for_some_layers_only_falls_back_where_its_algorithm_refuses(monkeypatch):
    """The committed rule picks depthwise at leaves its measured depthwise layers reached; a
    grouped layer that is not depthwise (96 groups of 2 channels, 2x2 windows: the AVX2
    forward tree's depthwise leaf takes fewer taps than 2x3's) reaches the same leaves,
    and gets the leaf's algorithm for every layer, which computes it (not a KeyError). The
    rule's AVX2 tree for AMD's CPUs (8 lanes) shows the case for every op, its AVX-512 trees
    not for all three: the tiles' width is pinned to 8, and the vendor to AMD, on any CPU."""
    from fastconv.implementations.cpu_rule import RULE
    monkeypatch.setitem(conv2d.FEATURES, "lanes", lambda g: 8)
    monkeypatch.setitem(conv2d.FEATURES, "intel", lambda g: 0)
    depthwise = geometry.conv_geometry((2, 960, 7, 7), (960, 1, 3, 3), 1, 1, 1, 960, "NCHW")
    grouped = geometry.conv_geometry((2, 192, 7, 7), (192, 2, 2, 2), 1, 1, 1, 96, "NCHW")
    for op in CONV_OPS:
        leaf = conv2d.walk(RULE[op], lambda name: conv2d.FEATURES[name](grouped))
        assert leaf == "depthwise", (op, "the committed rule no longer shows the case")
        picked = registry.choose(op, "cpu", grouped)
        assert picked in registry.general("cpu")
        assert registry.choose(op, "cpu", depthwise) == "depthwise"
    x = np.random.default_rng(0).standard_normal((2, 192, 7, 7)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((192, 2, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(ops.conv2d(x, w, padding=1, groups=96),
                               ops.conv2d(x, w, padding=1, groups=96, algo="reference"),
                               rtol=1e-4, atol=1e-4)


def test_a_list_leaf_resolves_to_its_first_serving_algorithm():
    tree = {"feature": "taps", "threshold": 10, "below": ["depthwise", "direct"],
            "at_least": "im2col"}
    assert conv2d.walk(tree, {"taps": 3}.get) == "depthwise"
    assert conv2d.walk(tree, {"taps": 3}.get, lambda algo: algo != "depthwise") == "direct"
    assert conv2d.walk(tree, {"taps": 30}.get, lambda algo: False) == "im2col"


@pytest.mark.parametrize("intel, expected", [(0, "blocked"), (1, "im2col")])
def test_the_committed_rule_has_a_tree_per_vendor(intel, expected, monkeypatch):
    """ResNet-50's 256 -> 64 1x1 layer on AVX-512 (56 x 56, two threads): blocked on the AMD
    machines measured, im2col's GEMM on the Xeon, where blocked took 8.7 ms against 5.3
    (benchmarks/results/cpu-nhwc-depthwise-borrowed.md): the vendor reaches the walk."""
    from fastconv.implementations.cpu_rule import RULE
    monkeypatch.setitem(conv2d.FEATURES, "lanes", lambda g: 16)
    monkeypatch.setitem(conv2d.FEATURES, "threads", lambda g: 2)
    monkeypatch.setitem(conv2d.FEATURES, "intel", lambda g: intel)
    g = geometry.conv_geometry((8, 256, 56, 56), (64, 256, 1, 1), 1, 0, 1, 1, "NCHW")
    assert conv2d.walk(RULE["conv2d"], lambda name: conv2d.FEATURES[name](g)) == expected


def test_held_out_judges_each_network_by_the_fit_of_the_others():
    """fit.held_out, in worker processes: networks whose layers follow one rule judge each
    other's fits perfect (1.0x); a network whose winners are the others' losers costs what the
    others' rule loses on it, the same figures as fitting each left out in turn here."""
    def network(name, flip):
        timings = {(taps, 16): {a: 1.0 if (a == "blocked") == (taps >= 100) != flip else 3.0
                                for a in ("blocked", "im2col")} for taps in (9, 25, 150, 576)}
        return [r | {"layer": f"{name}/{r['layer']}"} for r in _rows(timings)]
    alike = network("a", False) + network("b", False) + network("c", False)
    assert fit.held_out(alike, 2) == {op: 1.0 for op in CONV_OPS}
    rows = network("a", False) + network("b", False) + network("c", True)
    expected = {}
    for name in "abc":
        rule = fit.fit([r for r in rows if not r["layer"].startswith(name + "/")], 2)["rule"]
        for op, losses in fit.walk_loss([r for r in rows if r["layer"].startswith(name + "/")],
                                        rule).items():
            expected.setdefault(op, []).extend(losses)
    expected = {op: math.exp(sum(v) / len(v)) for op, v in expected.items()}
    assert fit.held_out(rows, 2, workers=2) == fit.held_out(rows, 2, workers=1) == expected
    assert all(ratio > 1.2 for ratio in expected.values())
