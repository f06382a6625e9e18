"""The CPU's algo="auto" rule, fitted to measurements: time every conv algorithm on every conv
layer of the suites (forward, backward input, backward weight: each op on its own), then find
the small decision tree over a layer's geometry that loses the least time against the fastest
algorithm of each layer.

The loss is the sum over measured layers (and thread counts, and machines) of log(t_chosen /
t_fastest): a geometric mean, as the suite's ratios are, so a small layer counts as much as a
big one. The tree has at most ``depth`` levels of ``feature >= threshold`` tests over
:data:`fastconv.implementations.conv2d.FEATURES`, thresholds taken from the measured values; a
split is kept only where it saves more than ``min_gain`` (5% of one layer's time by default),
so the rule does not chase noise. benchmarks/fit_dispatch.py runs it and writes the rule into
fastconv/implementations/cpu_rule.py; tests refit the committed measurements and compare.
"""

from __future__ import annotations

import csv
import math
import statistics
import time

import numpy as np
from tqdm import tqdm

from .. import ops, runtime
from ..implementations.conv2d import FEATURES
from ..registry import CONV_OPS, REFERENCE, implementations
from .cases import inputs

COLUMNS = ("machine", "threads", "layer", "op", "algo", "median_ms", *FEATURES)
# An algorithm whose first timed call takes this many times the fastest one's is not timed
# again (the direct kernels take seconds on VGG's layers): its one call stands as its time.
CUT = 8.0


def _call(case, op, algo, a):
    args = dict(stride=case.stride, padding=case.padding, groups=case.groups, algo=algo)
    if op == "conv2d":
        return lambda: ops.conv2d(a["x"], a["w"], **args)
    if op == "conv2d_backward_input":
        return lambda: ops.conv2d_backward_input(a["gy"], a["w"], a["x"].shape, **args)
    return lambda: ops.conv2d_backward_weight(a["gy"], a["x"], a["w"].shape, **args)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(cases, machine: str, repeats: int = 3, progress: bool = True) -> list[dict]:
    """One row per conv case, op and CPU algorithm on the current thread count: the median of
    ``repeats`` calls, the algorithms timed in turn after a warm-up call each."""
    algos = [a for a in implementations("conv2d", "cpu") if a != REFERENCE]
    conv = [c for c in cases if c.op == "conv2d"]
    rows = []
    for case in tqdm(conv, desc="fit: measuring", unit="layer", disable=not progress):
        arrays, g = inputs(case, np.float32), case.geometry()
        for op in CONV_OPS:
            calls = {algo: _call(case, op, algo, arrays) for algo in algos}
            for fn in calls.values():
                fn()  # compiles, outside the timing
            times = {algo: [_seconds(fn)] for algo, fn in calls.items()}
            fastest = min(t[0] for t in times.values())
            timed = [a for a in algos if times[a][0] < CUT * fastest]
            for _ in range(repeats - 1):
                for algo in timed:
                    times[algo].append(_seconds(calls[algo]))
            for algo, t in times.items():
                rows.append({"machine": machine, "threads": runtime.get_num_threads(),
                             "layer": case.name, "op": op, "algo": algo,
                             "median_ms": statistics.median(t) * 1e3,
                             **{name: f(g) for name, f in FEATURES.items()}})
    return rows


def write_csv(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v if k in ("machine", "layer", "op", "algo") else float(v)
                 for k, v in row.items()} for row in csv.DictReader(f)]


def _samples(rows, op):
    """(features (S, F), log times (S, A), algos) of ``op``: a sample per machine, thread count
    and layer; an algorithm not measured on a sample counts as infinitely slow there."""
    algos = sorted({r["algo"] for r in rows if r["op"] == op})
    keyed = {}
    for r in rows:
        if r["op"] == op:
            sample = keyed.setdefault((r["machine"], r["threads"], r["layer"]),
                                      {"features": [r[f] for f in FEATURES], "times": {}})
            sample["times"][r["algo"]] = r["median_ms"]
    features = np.array([s["features"] for s in keyed.values()], float)
    logs = np.array([[math.log(s["times"][a]) if a in s["times"] else math.inf for a in algos]
                     for s in keyed.values()])
    return features, logs, algos


def _tree(features, losses, algos, depth, min_gain):
    """(loss, node) of the best tree on these samples: a node is an algo name or
    {"feature", "threshold", "below", "at_least"}. ``losses`` (S, A): log slowdown against
    the sample's fastest algorithm."""
    totals = losses.sum(axis=0)
    leaf = int(np.argmin(totals))
    best = (float(totals[leaf]), algos[leaf])
    if depth == 0 or best[0] == 0:
        return best
    for f, name in enumerate(FEATURES):
        values = np.unique(features[:, f])
        for threshold in values[1:]:
            high = features[:, f] >= threshold
            below = _tree(features[~high], losses[~high], algos, depth - 1, min_gain)
            above = _tree(features[high], losses[high], algos, depth - 1, min_gain)
            loss = below[0] + above[0]
            if loss < best[0] - min_gain:
                best = (loss, {"feature": name, "threshold": int(threshold),
                               "below": below[1], "at_least": above[1]})
    return best


def fit(rows: list[dict], depth: int = 2, min_gain: float = math.log(1.05)) -> dict:
    """``{op: tree}`` for the conv ops, and the geomean slowdown against each layer's fastest
    algorithm of the rule, and of each single algorithm, per op (``"loss"``)."""
    rule, loss = {}, {}
    for op in CONV_OPS:
        features, logs, algos = _samples(rows, op)
        losses = logs - logs.min(axis=1, keepdims=True)
        total, rule[op] = _tree(features, losses, algos, depth, min_gain)
        count = len(features)
        loss[op] = {"rule": math.exp(total / count),
                    **{a: math.exp(losses[:, i].sum() / count) for i, a in enumerate(algos)}}
    return {"rule": rule, "loss": loss}


def choose(tree, features: dict) -> str:
    """The algo a fitted tree picks for a layer's features."""
    while isinstance(tree, dict):
        tree = tree["at_least"] if features[tree["feature"]] >= tree["threshold"] else (
            tree["below"])
    return tree
