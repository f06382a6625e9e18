"""The benchmark's reports: a self-describing header, an aligned text table, Markdown and a
PNG bar chart of the speed-ups."""

from __future__ import annotations

import math

from ..machine import describe

PLOT_HINT = "plotting needs matplotlib, which is not installed: pip install matplotlib"

def header(info: dict, rows: list[dict]) -> list[tuple[str, str]]:
    """The machine, the settings and the shapes: what makes a pasted table self-describing."""
    shown = dict.fromkeys((r["shape"], r["dims"]) for r in rows)
    ours = next((r["repeats"] for r in rows if r["impl"] != "numpy"), "-")
    numpy = next((r["repeats"] for r in rows if r["impl"] == "numpy"), "-")
    settings = (f"{rows[0]['dtype'] if rows else '-'}; median and min of {ours} calls ({numpy} "
                "for numpy) after a warm-up call, the implementations of an op timed in turn; "
                "vs numpy / vs torch: that median / this median (> 1: faster); % SGEMM: the "
                "row's GFLOP/s over the SGEMM rate below (the GPU's on a GPU); err vs torch: "
                "norm-relative error of the warm-up call's result against PyTorch's")
    return [*describe(info), ("timing", settings),
            *((name, dims) for name, dims in shown)]


_TITLES = {"op": "op", "shape": "shape", "impl": "impl", "threads": "threads",
           "median_ms": "median ms", "min_ms": "min ms", "gflops": "GFLOP/s",
           "pct_sgemm": "% SGEMM", "gbps": "GB/s", "vs_numpy": "vs numpy", "vs_torch": "vs torch",
           "rel_error": "err vs torch"}


def _number(value, suffix=""):
    """Three significant digits, never an exponent; blank for None."""
    if value is None:
        return ""
    digits = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
    return f"{value:.{digits}f}{suffix}"


def _cells(row: dict) -> list[str]:
    error = row["rel_error"]
    return [row["op"], row["shape"], row["impl"], str(row["threads"]), _number(row["median_ms"]),
            _number(row["min_ms"]), _number(row["gflops"]), _number(row["pct_sgemm"], "%"),
            _number(row["gbps"]), _number(row["vs_numpy"], "x"), _number(row["vs_torch"], "x"),
            "" if error is None else f"{error:.1e}"]


def table(rows: list[dict], info: dict) -> str:
    """The header and an aligned text table of ``rows``, for the terminal."""
    lines = [f"{label}: {text}" for label, text in header(info, rows)]
    grid = [list(_TITLES.values()), *map(_cells, rows)]
    widths = [max(len(r[i]) for r in grid) for i in range(len(_TITLES))]
    for n, cells in enumerate(grid):
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
                     .rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], info: dict) -> str:
    """The header as a list and the rows as a Markdown table (for benchmarks/results/*.md)."""
    lines = ["# fastconv benchmarks", ""]
    lines += [f"- **{label}**: {text}" for label, text in header(info, rows)]
    lines += ["", "| " + " | ".join(_TITLES.values()) + " |",
              "|" + "|".join("---" if i < 3 else "--:" for i in range(len(_TITLES))) + "|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _matplotlib():
    """matplotlib's Figure (drawn without pyplot, so no GUI backend) and Patch."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as err:
        raise ImportError(PLOT_HINT) from err
    return Figure, Patch


def check_plotting() -> None:
    """Raise ImportError, saying what to install, if :func:`plot` cannot run."""
    _matplotlib()


def plot(rows: list[dict], info: dict, path) -> None:
    """A PNG bar chart of the speed-up over numpy (log scale), one bar group per op and shape."""
    Figure, Patch = _matplotlib()
    groups = list(dict.fromkeys((r["op"], r["shape"]) for r in rows))
    colors = {impl: f"C{i}" for i, impl in enumerate(dict.fromkeys(r["impl"] for r in rows))}
    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) + 2), 5), layout="constrained")
    ax = fig.add_subplot()
    for j, group in enumerate(groups):
        bars = [r for r in rows if (r["op"], r["shape"]) == group]
        width = 0.8 / len(bars)
        for i, r in enumerate(bars):
            ax.bar(j + (i - (len(bars) - 1) / 2) * width, r["vs_numpy"] or 1.0, width,
                   color=colors[r["impl"]])
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [f"{op}\n{shape}" for op, shape in groups], rotation=60,
                  ha="right", fontsize=8)
    ax.set_ylabel("x faster than numpy (median time)")
    ax.set_title(f"fastconv on {info['cpu']}, {info['threads']} threads", fontsize=9)
    ax.legend(handles=[Patch(color=c, label=impl) for impl, c in colors.items()], fontsize=8)
    fig.savefig(path, format="png", dpi=120)
