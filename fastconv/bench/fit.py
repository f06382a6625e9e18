"""The CPU's algo="auto" rule, fitted to measurements: time every conv algorithm on every conv
layer of the suites (forward, backward input, backward weight: each op on its own), then find
the small decision tree over a layer's geometry that loses the least time against the fastest
algorithm of each layer.

The loss is the sum over measured layers (and thread counts, and machines) of log(t_chosen /
t_fastest): a geometric mean, as the suite's ratios are, so a small layer counts as much as a
big one. Each vector width and CPU vendor measured gets its own tree (joined under tests of
"lanes" and "intel": :data:`FORCED`); a tree has at most ``depth`` levels of ``feature >=
threshold`` tests over :data:`fastconv.implementations.conv2d.FEATURES`, each threshold between
two neighbouring measured values (:func:`_between`); a split is kept only where it saves more
than ``min_gain`` (5% of one layer's time by default), so
the rule does not chase noise. :func:`held_out` judges the options of :func:`fit` (a depth,
the forced features) by fitting on all networks but one and scoring the rule on that one
(benchmarks/results/dispatch-cpu.md has its figures; depth 3, the default, did best overall
there). benchmarks/fit_dispatch.py runs it and writes the rule into
fastconv/implementations/cpu_rule.py; tests refit the committed measurements and compare.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
import multiprocessing
import os
import pprint
import statistics
import textwrap
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from numba import njit
from tqdm import tqdm

from .. import ops
from ..implementations.conv2d import FEATURES, walk
from ..registry import CONV_OPS, REFERENCE, general, implementations, refusal
from .cases import CONVS, inputs
from .timing import _host_seconds

COLUMNS = tuple(dict.fromkeys(("machine", "threads", "layer", "op", "algo", "median_ms",
                               *FEATURES)))
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


def measure(cases, machine: str, repeats: int = 3, progress: bool = True,
            algos=None) -> list[dict]:
    """One row per conv case (a transposed one as the conv2d it transposes), op and CPU
    algorithm (of ``algos``, default all) on the current thread count: the median of
    ``repeats`` calls, the algorithms timed in turn after a warm-up call each."""
    algos = [a for a in implementations("conv2d", "cpu") if a != REFERENCE
             and (algos is None or a in algos)]
    conv = [c.as_conv2d() for c in cases if c.op in CONVS]
    rows = []
    for case in tqdm(conv, desc="fit: measuring", unit="layer", disable=not progress):
        arrays, g = inputs(case, np.float32), case.geometry()
        for op in CONV_OPS:
            # an algorithm for some layers only (registry.refusal) is measured on those alone
            served = [a for a in algos if refusal(op, "cpu", a, g) is None]
            if not served:
                continue
            calls = {algo: _call(case, op, algo, arrays) for algo in served}
            for fn in calls.values():
                fn()  # compiles, outside the timing
            times = {algo: [_host_seconds(fn)] for algo, fn in calls.items()}
            fastest = min(t[0] for t in times.values())
            timed = [a for a in served if times[a][0] < CUT * fastest]
            for _ in range(repeats - 1):
                for algo in timed:
                    times[algo].append(_host_seconds(calls[algo]))
            for algo, t in times.items():
                rows.append({"machine": machine, "layer": case.name, "op": op, "algo": algo,
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
        return [{k: v if k in ("machine", "layer", "op", "algo") else
                 float(v) if k == "median_ms" else int(v)
                 for k, v in row.items()} for row in csv.DictReader(f)]


def _calls(rows) -> dict:
    """{(machine, threads, layer, op): {algo: row}}: the rows of each measured call, in the
    rows' order."""
    calls = {}
    for r in rows:
        calls.setdefault((r["machine"], int(r["threads"]), r["layer"], r["op"]), {})[r["algo"]] = r
    return calls


def _samples(rows, op):
    """(features (S, F), log times (S, A), algos) of ``op``: a sample per machine, thread count
    and layer; an algorithm not measured on a sample counts as infinitely slow there."""
    algos = sorted({r["algo"] for r in rows if r["op"] == op})
    samples = [by_algo for key, by_algo in _calls(rows).items() if key[3] == op]
    features = np.array([[next(iter(s.values()))[f] for f in FEATURES] for s in samples], float)
    logs = np.array([[math.log(s[a]["median_ms"]) if a in s else math.inf for a in algos]
                     for s in samples])
    return features, logs, algos


def _tree(features, losses, leaf, depth, min_gain, orders=None):
    """(loss, node) of the best tree on these samples: a node is a leaf (``leaf(totals)`` of
    its samples' losses: :func:`_leaf`) or {"feature", "threshold", "below", "at_least"}.
    ``losses`` (S, A): log slowdown against the sample's fastest algorithm. A split must beat
    the best found so far by ``min_gain``. ``orders`` (F, S): the samples in each feature's
    stable sort order (computed here where not given)."""
    if orders is None:
        orders = np.argsort(features, axis=0, kind="stable").T.copy()
    totals = losses.sum(axis=0)
    best = (float(totals.min()), leaf(totals))
    if depth == 0 or best[0] == 0:
        return best
    if depth == 1:
        return _stump(features, losses, orders, totals, leaf, min_gain, best)
    for f, name in enumerate(FEATURES):
        values = np.unique(features[:, f])
        for threshold in map(_between, values[:-1], values[1:]):
            high = features[:, f] >= threshold
            below = _tree(features[~high], losses[~high], leaf, depth - 1, min_gain,
                          _within(orders, ~high))
            above = _tree(features[high], losses[high], leaf, depth - 1, min_gain,
                          _within(orders, high))
            loss = below[0] + above[0]
            if loss < best[0] - min_gain:
                best = (loss, {"feature": name, "threshold": int(threshold),
                               "below": below[1], "at_least": above[1]})
    return best


@njit(cache=True)
def _between(low, high):
    """The threshold that splits two neighbouring measured values of a feature: their geometric
    mean, rounded up (above ``low`` always), so that a layer the fit never saw goes the way of
    the measured value nearer it by ratio (the features are sizes). Each network judged by the
    rule fitted on the others (benchmarks/results/dispatch-cpu.md), thresholds at the higher
    value lost 1.194 / 1.359 / 1.302x against the fastest algorithm (forward / input / weight
    gradient), at the geometric mean 1.187 / 1.332 / 1.295x; the measured layers' picks are
    the same either way."""
    return max(low + 1.0, float(math.ceil(math.sqrt(low * high))))


def _within(orders, kept):
    """The sort orders (F, S) of the samples ``kept`` (S,) keeps, numbered among themselves:
    each order filtered, so a stable one stays stable."""
    ranks = np.cumsum(kept) - 1
    return ranks[orders[kept[orders]].reshape(len(orders), -1)]


def _leaf(totals, algos, served):
    """A leaf of the tree: the algorithm of least total loss; where that one serves some
    layers only (registry.refusal), [it, the general algorithm of least loss], for the layers
    it refuses (a layer the fit never saw may reach the leaf). ``served``: the general
    algorithms (registry.general)."""
    best = algos[int(np.argmin(totals))]
    if best in served:
        return best
    return [best, min((t, a) for t, a in zip(totals, algos, strict=True) if a in served)[1]]


def _stump(features, losses, orders, totals, leaf, min_gain, best):
    """_tree at depth 1 (:func:`_best_stump`), ``totals`` the losses' sums; ``best`` stands
    unless a split beats it by ``min_gain``."""
    loss, f, threshold, below, above = _best_stump(features, losses, orders, totals, best[0],
                                                   min_gain)
    if f < 0:
        return best
    return (loss, {"feature": list(FEATURES)[f], "threshold": int(threshold),
                   "below": leaf(below), "at_least": leaf(above)})


@njit(cache=True)
def _best_stump(features, losses, orders, totals, best, min_gain):
    """(loss, feature index, threshold, below's totals, above's totals) of the best split of
    every feature and threshold, a feature's best kept where it beats the best so far by
    ``min_gain`` (feature -1: none did). The samples in a feature's order (``orders``), a
    split's two sides' totals are a running sum and its complement. Compiled: a fit calls
    it for every node of depth 1 its deeper trees try (~100,000 for the AVX2 rows' three ops)."""
    samples, algos = losses.shape
    found, threshold = -1, 0.0
    below_best, above_best = np.zeros(algos), np.zeros(algos)
    for f in range(features.shape[1]):
        order = orders[f]
        running = np.zeros(algos)
        split, cut = np.inf, -1
        for i in range(samples - 1):
            low, high = np.inf, np.inf
            for a in range(algos):
                running[a] += losses[order[i], a]
                low, high = min(low, running[a]), min(high, totals[a] - running[a])
            if features[order[i], f] != features[order[i + 1], f] and low + high < split:
                split, cut = low + high, i
        if cut >= 0 and split < best - min_gain:
            running[:] = 0
            for i in range(cut + 1):
                running += losses[order[i]]
            best, found = split, f
            threshold = _between(features[order[cut], f], features[order[cut + 1], f])
            below_best, above_best = running.copy(), totals - running
    return best, found, threshold, below_best, above_best


# Features whose every measured value gets a tree of its own, joined by tests of the feature
# (the first outermost), and those that could (benchmarks/fit_dispatch.py judges each way on
# networks left out of the fit). The vector widths run different code (tile shapes, BLAS
# kernels): held out (2026-12-02), a tree per width lost 1.166 / 1.321 / 1.280x (forward /
# input / weight gradient) against the fastest algorithm, one tree over both 1.192 / 1.480 /
# 1.260x. A tree per thread count did not pay: 1.176 / 1.383 / 1.304x; it fitted the measured
# networks closer (0.8% on one thread's forward) and lost more on those left out. A tree per
# vendor (2026-12-06, the first Xeon's rows beside three AMD machines') did: 1.161 / 1.302 /
# 1.270x against 1.164 / 1.316 / 1.298x for one over both, which had cost the Zen 4 up to 1.5x
# on ResNet-50's 1x1 layers to win the Xeon's (benchmarks/results/
# cpu-nhwc-depthwise-borrowed.md). The layers Winograd serves (plain_3x3) get trees of their
# own (2026-12-06): fitted among the others, its picks on the Xeon's 3x3 layers took the depth
# the vendor's 1x1 layers had, sending ResNet-50's layer1.conv1 and MobileNetV2's projections
# to blocked, 1.4-1.9x slower than im2col there (benchmarks/results/cpu-winograd.md).
FORCED = ("lanes", "intel", "plain_3x3")
FORCEABLE = ("lanes", "threads", "intel", "plain_3x3")


def fit(rows: list[dict], depth: int = 3, min_gain: float = math.log(1.05),
        forced: tuple = FORCED) -> dict:
    """``{op: tree}`` for the conv ops, and the geomean slowdown against each layer's fastest
    algorithm of the rule, and of each single algorithm, per op (``"loss"``). ``forced``: the
    features whose measured values get a tree each (the others' trees may still test them)."""
    rule, loss = {}, {}
    for op in CONV_OPS:
        features, logs, algos = _samples(rows, op)
        # an algorithm not measured on a sample: far slower than any measured one, but finite,
        # so that the running sums of _stump stay finite
        losses = np.minimum(logs - logs.min(axis=1, keepdims=True), 1e6)
        leaf = functools.partial(_leaf, algos=algos, served=general("cpu"))
        total, rule[op] = _per_value(features, losses, leaf, depth, min_gain, forced)
        count = len(features)
        # an algorithm for some layers only, alone: infinitely slow on the others
        loss[op] = {"rule": math.exp(total / count),
                    **{a: math.exp(losses[:, i].sum() / count) if np.isfinite(logs[:, i]).all()
                       else math.inf for i, a in enumerate(algos)}}
    return {"rule": rule, "loss": loss}


def _per_value(features, losses, leaf, depth, min_gain, forced):
    """(loss, node): a tree per measured value of ``forced[0]`` (each split further by the rest
    of ``forced``), joined by tests of it; a value's tree serves the values above it up to the
    next measured one (two threads' tree serves 16). Neighbouring values with equal trees share
    one."""
    if not forced:
        return _tree(features, losses, leaf, depth, min_gain)
    column = features[:, list(FEATURES).index(forced[0])]
    total, node = 0.0, None
    for value in np.unique(column):
        here = column == value
        loss, tree = _per_value(features[here], losses[here], leaf, depth, min_gain,
                                forced[1:])
        total += loss
        node = tree if node is None or tree == node else {
            "feature": forced[0], "threshold": int(value), "below": node, "at_least": tree}
    return total, node


def render(fitted: dict, source: str) -> str:
    """fastconv/implementations/cpu_rule.py for a :func:`fit` result, ``source`` saying what
    it was fitted on."""
    lines = [line for op, loss in fitted["loss"].items() for line in textwrap.wrap(
        f"{op}: the rule {loss['rule']:.3f}x, " + ", ".join(
            f"{a} {v:.3f}x" if math.isfinite(v) else f"{a} (some layers only)"
            for a, v in loss.items() if a != "rule"),
        width=92, subsequent_indent="    ")]
    return (f'''"""The CPU's algo="auto" rule: a decision tree per conv op over the layer's
geometry (fastconv.implementations.conv2d.FEATURES), fitted by benchmarks/fit_dispatch.py; do not
edit it by hand, rerun that.

{textwrap.fill(f"Fitted on {source}.", 96)}
Geomean slowdown against the fastest algorithm of each measured layer (1.000x: always the
fastest), of this rule and of each algorithm alone:
''' + "".join(f"    {line}\n" for line in lines) + f'''"""

RULE = {pprint.pformat(fitted["rule"], width=96, sort_dicts=False)}
''')


def table(rows: list[dict], rule: dict) -> str:
    """Markdown: per machine, thread count, layer and op, each algorithm's time, the fastest
    and the rule's pick (and what the pick loses where it is not the fastest)."""
    algos = sorted({r["algo"] for r in rows})
    out = ["| machine | threads | layer | op | " + " | ".join(f"{a} ms" for a in algos)
           + " | fastest | rule picks | loss |",
           "|---|--:|---|---|" + "--:|" * len(algos) + "---|---|--:|"]
    for (machine, threads, layer, op), by_algo in _calls(rows).items():
        times = {a: by_algo[a]["median_ms"] for a in algos if a in by_algo}
        fastest = min(times, key=times.get)
        pick = walk(rule[op], next(iter(by_algo.values())).__getitem__, times.__contains__)
        loss = times[pick] / times[fastest] if pick in times else math.inf
        out.append(f"| {machine} | {threads} | {layer} | {op} | "
                   + " | ".join(f"{times[a]:.3g}" if a in times else "-" for a in algos)
                   + f" | {fastest} | {pick} | {loss:.2f}x |")
    return "\n".join(out) + "\n"


def walk_loss(rows, rule) -> dict:
    """{op: [log(t_picked / t_fastest) per sample]} of ``rule`` on ``rows``."""
    losses = {}
    for (*_, op), by_algo in _calls(rows).items():
        features = next(iter(by_algo.values()))
        pick = walk(rule[op], features.__getitem__, by_algo.__contains__)
        times = {a: r["median_ms"] for a, r in by_algo.items()}
        losses.setdefault(op, []).append(math.log(times[pick] / min(times.values())))
    return losses


def held_out(rows: list[dict], depth: int, workers: int | None = None, **options) -> dict:
    """{op: geomean slowdown against the fastest} of rules fitted (:func:`fit`, with ``depth``
    and ``options``) on every network but one and judged on that one, over all networks: how
    well a rule generalises to unseen layers. The networks' fits run in ``workers`` processes
    (default: one a CPU): a fit of the AVX2 rows took ~35 s on one Zen 3 vCPU, and
    dispatch-cpu.md's table ~100 of them, 47 minutes one after another."""
    networks = sorted({r["layer"].split("/")[0] for r in rows})
    # spawned, not forked: a fork would copy Numba's thread pool in whatever state it is
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=context) as pool:
        parts = list(pool.map(_left_out, itertools.repeat(rows), networks,
                              itertools.repeat(depth), itertools.repeat(options)))
    losses = {}
    for part in parts:  # in the networks' order, whatever finished first
        for op, values in part.items():
            losses.setdefault(op, []).extend(values)
    return {op: math.exp(sum(v) / len(v)) for op, v in losses.items()}


def _left_out(rows, network, depth, options) -> dict:
    """{op: log slowdowns} of ``network``'s rows under the rule fitted on the others'."""
    rule = fit([r for r in rows if not r["layer"].startswith(network + "/")], depth,
               **options)["rule"]
    return walk_loss([r for r in rows if r["layer"].startswith(network + "/")], rule)
