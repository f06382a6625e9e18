"""Fit the CPU's algo="auto" rule to measurements (fastconv.bench.fit says how).

    python benchmarks/fit_dispatch.py                      # measure here, then fit
    python benchmarks/fit_dispatch.py --suite resnet_cifar --add   # measure a suite more
    python benchmarks/fit_dispatch.py --from-csv A.csv B.csv   # refit, e.g. two machines' files
    python benchmarks/fit_dispatch.py --algos winograd   # remeasure one algorithm, then fit

    python benchmarks/fit_dispatch.py --layers '*-b1/*' --add   # the batch-1 layers only

Measuring times every CPU conv algorithm on every conv layer of the layer suite (and LeNet-5's
at the training batch, 64, and the ungrouped 3x3 stride-1 ones at batch 1, too), forward,
backward input and backward weight each on its own, on each --threads count, and appends the
rows to --csv (a machine's rows replace that machine's earlier ones). Fitting reads --csv (or
--from-csv) and writes the rule to --rule and the table it came from to --markdown.
"""

import argparse
import dataclasses
import fnmatch
import math
import sys
import time
from pathlib import Path

from fastconv import bench, kernels, registry, runtime
from fastconv.bench import fit
from fastconv.machine import describe, machine
from fastconv.registry import CONV_OPS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TRAIN = bench.TRAIN_BATCH  # fastconv train's default batch


SIMULATED = ("; rows of AVX2 tiles simulated on an AVX-512 CPU come from a process whose "
             "llvmlite saw no AVX-512 (tests/avx2_host/sitecustomize.py on PYTHONPATH) and "
             "compiled for NUMBA_CPU_NAME=haswell, with OPENBLAS_CORETYPE=Haswell: AVX2's code "
             "on this CPU's caches and ports, as in cpu-avx2-simulated.md")


def machine_label() -> str:
    """The CPU's name and the vector instructions fastconv's tiles were compiled for: the
    rule's measurements are told apart by these. AVX2's tiles on an AVX-512 CPU (llvmlite told
    the host has no AVX-512, as tests/test_avx2_host.py does) say so."""
    simd = "avx512" if kernels.VECTOR_LANES == 16 else "avx2"
    if simd == "avx2" and "avx512f" in runtime.simd_flags():
        simd = "avx2 tiles simulated on an avx512 CPU"
    return f"{runtime.cpu_name()} ({simd})"


def _at_batch(case, batch):
    """The suite's case at another batch, its network's name marked with it (lenet5-b64/c1)."""
    network, layer = case.name.split("/", 1)
    return dataclasses.replace(case, name=f"{network}-b{batch}/{layer}",
                               x=(batch, *case.x[1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", choices=bench.SUITE_NAMES,
                        help="the layers to measure (default: all)")
    parser.add_argument("--layers", default="*", metavar="PATTERNS",
                        help="comma-separated name patterns (fnmatch) of the suite's layers to "
                             "measure, e.g. 'decoders/dcgan.*,decoders/unet.*.up', or of those "
                             "also measured at another batch, e.g. 'lenet5-b64/*,*-b1/*' "
                             "(default: all)")
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts to measure on (default: 1,2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per algorithm, op and layer (default: 3)")
    parser.add_argument("--depth", type=int, default=3,
                        help="the rule's decision tree's levels at most (default: 3)")
    parser.add_argument("--algos", metavar="NAME[,NAME...]",
                        help="measure only these algorithms: their rows of this machine on the "
                             "layers measured replace its earlier ones, its other rows stay "
                             "(default: every algorithm)")
    parser.add_argument("--add", action="store_true",
                        help="keep this machine's earlier rows but those of the layers measured "
                             "now (default: measuring replaces all of them)")
    parser.add_argument("--quick", action="store_true",
                        help="the suite's --quick sizes: a smoke run, never a rule to keep")
    parser.add_argument("--csv", type=Path, default=RESULTS / "dispatch-cpu.csv",
                        help="the measurements file (default: benchmarks/results/"
                             "dispatch-cpu.csv)")
    parser.add_argument("--from-csv", type=Path, nargs="+", metavar="CSV",
                        help="measure nothing: fit on these files' rows")
    parser.add_argument("--rule", type=Path,
                        default=ROOT / "fastconv" / "implementations" / "cpu_rule.py",
                        help="where the fitted rule goes (default: fastconv/implementations/"
                             "cpu_rule.py)")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "dispatch-cpu.md",
                        help="the table the rule came from (default: benchmarks/results/"
                             "dispatch-cpu.md)")
    args = parser.parse_args(argv)

    if args.from_csv:
        rows = [row for path in args.from_csv for row in fit.read_csv(path)]
        sources = args.from_csv
    else:
        label = machine_label()
        patterns = args.layers.split(",")
        suite = list(bench.cases(args.suite, quick=args.quick))
        # Layers whose best algorithm changes with the batch also at another: LeNet-5's at the
        # batch `fastconv train` runs it with (64), its layers small enough; the ungrouped
        # 3x3 stride-1 ones at 1, where one image pays for winograd's filter transform
        # (ResNet-18's 1 x 256 x 14 x 14 layer3: winograd 2.3 ms, blocked 1.8 on one Xeon
        # thread, PyTorch 1.5; at batch 8 winograd is the fastest)
        if not args.quick:
            suite += [_at_batch(c, TRAIN) for c in suite if c.name.startswith("lenet5/")] + [
                _at_batch(c, 1) for c in suite if c.op == "conv2d" and c.groups == 1
                and c.geometry().plain_3x3 and c.x[0] > 1]
        chosen = [c for c in suite if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
        measured = {c.name for c in chosen}
        algos = args.algos.split(",") if args.algos else None
        rows = [r for r in (fit.read_csv(args.csv) if args.csv.exists() else [])
                if r["machine"] != label or ((args.add or algos) and r["layer"] not in measured)
                or (algos and r["algo"] not in algos)]
        if not args.quick:
            bench.settle_memory()
        for threads in (int(t) for t in args.threads.split(",")):
            runtime.set_num_threads(threads)
            rows += fit.measure(chosen, label, args.repeats, algos=algos)
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        fit.write_csv(rows, args.csv)
        sources = [args.csv]
    fitted = fit.fit(rows, depth=args.depth)
    machines = sorted({r["machine"] for r in rows})
    names = ", ".join(p.name for p in sources)
    args.rule.write_text(fit.render(fitted, f"{names}: {len(rows)} timings of "
                                            f"{'; '.join(machines)}"))
    info = "\n".join(f"- **{k}**: {v}" for k, v in describe(machine()))
    args.markdown.write_text(
        "# The CPU's algo=\"auto\" rule and the measurements it was fitted on\n\n"
        f"`python benchmarks/fit_dispatch.py`, fitted on {names}; measured on:\n\n{info}\n\n"
        "(the machine that ran the fit; each row names the machine it was measured on"
        + (SIMULATED if any("simulated" in m for m in machines) else "") + ").\n\n"
        "## The rule (fastconv/implementations/cpu_rule.py)\n\n```\n"
        + args.rule.read_text().split('"""')[1].strip() + "\n\n"
        + "\n".join(f"{op}: {tree}" for op, tree in fitted["rule"].items())
        + f"\n```\n\nPicking costs {_pick_cost():.1f} us a call (registry.choose on a ResNet "
        "layer, best of 5 x 10,000 calls).\n\n## How well a rule generalises\n\n"
        "Each network's layers judged by the rule fitted on the other networks' (geomean "
        "slowdown against the fastest algorithm of each layer; 1.000x: always the fastest), "
        "at each depth, and at this one with a tree per value of a feature the rule has one "
        "tree over (or the other way round):\n\n" + _held_out(rows, args.depth)
        + "".join(f"\n## A tree per value of {feature}, or one over all\n\n"
                  + _own_trees(rows, args.depth, feature, fitted["rule"])
                  for feature in fit.FORCEABLE)
        + "\n## Every measurement (median ms)\n\n" + fit.table(rows, fitted["rule"]))
    print(args.rule.read_text())
    return 0


def _pick_cost() -> float:
    """Microseconds registry.choose takes a call (the rule on a ResNet layer; best of 5 runs of
    10,000 calls)."""
    g = bench.cases("resnet18")[2].geometry()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10_000):
            registry.choose("conv2d_backward_weight", "cpu", g)
        best = min(best, (time.perf_counter() - start) / 10_000)
    return best * 1e6


def _toggled(feature) -> tuple:
    """fit.FORCED with ``feature`` left out where it is in, added where it is not."""
    return (tuple(f for f in fit.FORCED if f != feature) if feature in fit.FORCED
            else (*fit.FORCED, feature))


def _toggled_name(feature) -> str:
    """The rule of :func:`_toggled` in words."""
    return (f"one tree over all {feature}" if feature in fit.FORCED
            else f"a tree per {feature}")


def _held_out(rows, depth) -> str:
    """Markdown: the rules of each depth up to ``depth``, and of ``depth`` with each feature of
    fit.FORCEABLE toggled (:func:`_toggled`), judged on the network left out of their fit."""
    if len({r["layer"].split("/")[0] for r in rows}) < 2:
        return "(needs the layers of two networks at least)\n"
    variants = {f"depth {d}": {"depth": d} for d in range(1, depth + 1)}
    variants |= {f"depth {depth}, {_toggled_name(feature)}": {
        "depth": depth, "forced": _toggled(feature)} for feature in fit.FORCEABLE}
    lines = ["| rule | " + " | ".join(CONV_OPS) + " |", "|---|" + "--:|" * len(CONV_OPS)]
    for name, options in variants.items():
        scores = fit.held_out(rows, **options)
        lines.append(f"| {name} | " + " | ".join(f"{scores[op]:.3f}x" for op in CONV_OPS)
                     + " |")
    return "\n".join(lines) + "\n"


def _own_trees(rows, depth, feature, rule) -> str:
    """Markdown: the rows of each value of a feature of fit.FORCEABLE judged by ``rule`` (the
    fit's) and by the fit with the feature toggled (:func:`_toggled`): a tree per value, or
    one tree over all, free to test it like any other feature (geomean slowdown against the
    fastest algorithm of each layer)."""
    values = sorted({r[feature] for r in rows})
    if len(values) < 2:
        return f"(needs the rows of two values of {feature})\n"
    rules = {"the rule": rule,
             _toggled_name(feature): fit.fit(rows, depth, forced=_toggled(feature))["rule"]}
    lines = ["| tree | " + " | ".join(f"{feature} {v}: {op}" for v in values for op in CONV_OPS)
             + " |", "|---|" + "--:|" * (len(values) * len(CONV_OPS))]
    for name, tree in rules.items():
        scores = [fit.walk_loss([r for r in rows if r[feature] == v], tree) for v in values]
        lines.append(f"| {name} | " + " | ".join(
            f"{math.exp(sum(s[op]) / len(s[op])):.3f}x" for s in scores for op in CONV_OPS)
            + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
