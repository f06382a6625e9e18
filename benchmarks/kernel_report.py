"""The static report of every CUDA kernel (fastconv.bench.kernels says how it is read): for
each kernel, float32 and float64, sm_90 and sm_80, its registers, spills, shared memory, the
theoretical occupancy at its launch's block size, and the instruction mix of the whole kernel
and of its main loop. No GPU needed.

    python benchmarks/kernel_report.py [--markdown benchmarks/results/cuda-kernels.md]
"""

import argparse
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from fastconv.bench import kernels

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", type=Path, default=RESULTS / "cuda-kernels.md",
                        help="where the table goes (default: benchmarks/results/"
                             "cuda-kernels.md)")
    parser.add_argument("--kernel", action="append", metavar="MODULE.NAME",
                        help="only this kernel (repeatable; default: every registered one)")
    args = parser.parse_args(argv)
    missing = [name for name in ("ptxas", "nvdisasm") if kernels.tool(name) is None]
    if missing:
        print(f"kernel_report: {' and '.join(missing)} not found: pip install "
              "nvidia-cuda-nvcc nvidia-cuda-nvdisasm (the dev extra has them)", file=sys.stderr)
        return 2
    rows = kernels.reports(names=args.kernel)
    version = subprocess.run([kernels.tool("ptxas"), "--version"], capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
    table = kernels.markdown(rows)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(
        "# The CUDA kernels, statically\n\n"
        f"`python benchmarks/kernel_report.py`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"no GPU: numba-cuda's PTX assembled by ptxas ({version}) and disassembled by "
        "nvdisasm. regs: registers a thread; spill B: spill stores + loads; smem B: static "
        "shared memory a block; threads: a block as the launcher makes it by default (a "
        "launcher that sizes blocks to the data: its largest); occupancy: resident warps over "
        "the SM's 64 at that block size; instr: SASS instructions; FFMA (DFMA for float64), "
        "int (integer and move instructions), LDG and LDS: of the whole kernel; loop: of its "
        "main loop, the innermost loop with the most FFMA (fastconv/bench/kernels.py).\n\n"
        + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
