"""What each CUDA kernel costs the GPU, read without one: registers, spills, shared memory and
the occupancy they allow, and the instruction mix of the kernel and of its main loop.

Every kernel the registry lists is compiled to PTX by numba-cuda for a compute capability,
assembled by ``ptxas -v`` (registers, spill bytes, shared memory) and disassembled by
``nvdisasm`` (the SASS: what the GPU runs). The main loop is the innermost loop (a backward
branch with no other inside it) nested deepest, then holding the most FFMA, then the most
instructions: the loop over K or the window, not an epilogue's loop over outputs, whose
activation functions also count FFMA. Occupancy is
the theoretical one: resident warps over the SM's maximum, from the register file, shared
memory and the warp and block limits of the architecture, at the block size the kernel's
launcher uses. ptxas and nvdisasm come in the ``nvidia-cuda-nvcc`` and ``nvidia-cuda-nvdisasm``
wheels (the dev extra). ``python benchmarks/kernel_report.py`` writes the table, ``fastconv info
--kernels`` prints it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

# Per-SM limits (CUDA C Programming Guide, "Compute capabilities", table 21): 64K registers
# allocated per warp in units of 256, 64 warps, 32 blocks, shared memory (KiB, 1 KiB of it
# reserved per block).
ARCHITECTURES = {(9, 0): dict(registers=65536, warps=64, blocks=32, shared_kib=228),
                 (8, 0): dict(registers=65536, warps=64, blocks=32, shared_kib=164)}
_USED = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_SHARED = re.compile(r"(\d+) bytes smem")
_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_BRANCH = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA\b.*?`?\(?\.L_x_(\d+)")
_LABEL = re.compile(r"^\.L_x_(\d+):")


def tool(name: str) -> str | None:
    """The path of a CUDA tool: the installed ``nvidia-*`` wheel's (the dev extra pins its
    version), else the one on PATH."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else ()):
        for candidate in sorted(Path(root).glob(f"*/bin/{name}")):
            return str(candidate)
    return shutil.which(name)


@dataclass
class Report:
    kernel: str
    dtype: str
    cc: tuple[int, int]
    registers: int
    spill_bytes: int
    shared_bytes: int
    threads: int | None
    occupancy: float | None
    instructions: int
    ffma: int
    integer: int
    global_loads: int
    shared_loads: int
    loop_instructions: int
    loop_ffma: int
    loop_integer: int


def ptx(kernel, dtype: str, cc: tuple[int, int]) -> str:
    """The kernel's PTX for arrays of ``dtype``, compiled for ``cc`` without a GPU: numba-cuda
    asks the current device's compute capability for device functions, so a stand-in with
    ``cc`` answers."""
    from numba import cuda
    from numba.cuda import dispatcher

    from ..kernels.cuda_device import signature

    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        code, _ = cuda.compile_ptx(kernel.py_func, signature(kernel.params, dtype), cc=cc)
    finally:
        dispatcher.get_current_device = real
    return code


def assemble(code: str, cc: tuple[int, int]) -> tuple[dict, str]:
    """(ptxas's resource usage, the SASS) of PTX ``code`` for ``cc``."""
    arch = f"sm_{cc[0]}{cc[1]}"
    with tempfile.TemporaryDirectory() as folder:
        source, binary = Path(folder) / "kernel.ptx", Path(folder) / "kernel.cubin"
        source.write_text(code)
        done = subprocess.run([tool("ptxas"), f"-arch={arch}", "-v", "-o", str(binary),
                               str(source)], capture_output=True, text=True, check=True)
        sass = subprocess.run([tool("nvdisasm"), "-c", str(binary)], capture_output=True,
                              text=True, check=True).stdout
    info = done.stderr
    spills = _SPILLS.search(info)
    shared = _SHARED.search(info)
    return dict(registers=int(_USED.search(info).group(1)),
                spill_bytes=int(spills.group(1)) + int(spills.group(2)) if spills else 0,
                shared_bytes=int(shared.group(1)) if shared else 0), sass


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, opcode) of every SASS instruction, in order."""
    return [(int(m.group(1), 16), m.group(2)) for m in map(_LINE.search, sass.splitlines()) if m]


def loops(sass: str) -> list[tuple[int, int]]:
    """[start, end] addresses of each loop: a branch back to a label at or before it."""
    labels, found = {}, []
    lines = sass.splitlines()
    for i, line in enumerate(lines):
        label = _LABEL.match(line.strip())
        if label:  # the label's address is the next instruction's
            following = next((m for m in map(_LINE.search, lines[i + 1:]) if m), None)
            if following:
                labels[label.group(1)] = int(following.group(1), 16)
    for match in map(_BRANCH.search, lines):
        if match and match.group(2) in labels:
            start, end = labels[match.group(2)], int(match.group(1), 16)
            if start < end:  # a branch to itself is the padding after EXIT, not a loop
                found.append((start, end))
    return found


def _mix(ops) -> dict:
    names = [op for _, op in ops]
    return dict(instructions=len(names),
                ffma=sum(op.startswith(("FFMA", "DFMA")) for op in names),
                integer=sum(op.startswith(("IMAD", "IADD", "LEA", "SHF", "ISETP", "LOP", "IMNMX",
                                           "IABS", "I2F", "F2I", "SEL", "MOV")) for op in names),
                global_loads=sum(op.startswith(("LDG", "LD.")) or op == "LD" for op in names),
                shared_loads=sum(op.startswith("LDS") for op in names))


def main_loop(sass: str) -> list[tuple[int, str]]:
    """The instructions of the kernel's main loop (see the module docstring); none when it has
    no loop."""
    ops = instructions(sass)
    spans = loops(sass)
    def depth(span):
        return sum(o[0] <= span[0] and span[1] <= o[1] for o in spans)
    innermost = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1]
                                             for o in spans)]
    bodies = [(depth(span), [(a, op) for a, op in ops if span[0] <= a <= span[1]])
              for span in innermost]
    return max(bodies, key=lambda b: (b[0], _mix(b[1])["ffma"], len(b[1])), default=(0, []))[1]


def occupancy(registers: int, shared_bytes: int, threads: int, cc: tuple[int, int]) -> float:
    """Theoretical occupancy: resident warps over the SM's maximum."""
    limits = ARCHITECTURES[cc]
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    blocks = min(limits["blocks"], limits["warps"] // warps,
                 limits["registers"] // (per_warp * warps))
    if shared_bytes:
        blocks = min(blocks, limits["shared_kib"] * 1024 // (shared_bytes + 1024))
    return blocks * warps / limits["warps"]


def launched_threads(name: str) -> int | None:
    """Threads a block as the kernel's launcher (the ``launch_*`` function beside it that
    launches it) makes them by default: its ``block`` pair's product, or the module constant
    it launches with, or its module's MAX_THREADS where it sizes blocks to the data (at most
    that); None where no launcher names the kernel."""
    module_name, _, kernel = name.partition(".")
    module = importlib.import_module(f"fastconv.kernels.{module_name}")
    for launcher_name, launcher in vars(module).items():
        if not (launcher_name.startswith("launch_") and inspect.isfunction(launcher)):
            continue
        source = inspect.getsource(launcher)
        if not re.search(rf"\b{kernel}\b", source):
            continue
        block = inspect.signature(launcher).parameters.get("block")
        if block is not None:
            return math.prod(block.default)
        constant = re.search(r"launch\(\w+,\s*[^,]+,\s*([A-Z_]+)\b", source)
        if constant:
            value = getattr(module, constant.group(1))
            return math.prod(value) if isinstance(value, tuple) else value
        return getattr(module, "MAX_THREADS", None)
    return None


def report(name: str, kernel, dtype: str, cc: tuple[int, int]) -> Report:
    usage, sass = assemble(ptx(kernel, dtype, cc), cc)
    threads = launched_threads(name)
    whole, loop = _mix(instructions(sass)), _mix(main_loop(sass))
    return Report(name, dtype, cc, usage["registers"], usage["spill_bytes"],
                  usage["shared_bytes"], threads,
                  occupancy(usage["registers"], usage["shared_bytes"], threads, cc)
                  if threads else None,
                  whole["instructions"], whole["ffma"], whole["integer"],
                  whole["global_loads"], whole["shared_loads"], loop["instructions"],
                  loop["ffma"], loop["integer"])


def reports(ccs=((9, 0), (8, 0)), dtypes=("float32", "float64"), names=None):
    """A :class:`Report` for every registered CUDA kernel (or those ``names``), dtype and cc."""
    from .. import dispatch, registry  # noqa: F401  (dispatch registers every implementation)

    kernels = registry.cuda_kernels()
    return [report(name, kernels[name], dtype, cc) for name in (names or kernels)
            for cc in ccs for dtype in dtypes]


def markdown(rows: list[Report]) -> str:
    def share(part, whole):
        return f"{100 * part / whole:.0f}%" if whole else ""
    lines = ["| kernel | dtype | arch | regs | spill B | smem B | threads | occupancy | "
             "instr | FFMA | int | LDG | LDS | loop instr | loop FFMA | loop int |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(
            f"| {r.kernel} | {r.dtype} | sm_{r.cc[0]}{r.cc[1]} | {r.registers} | "
            f"{r.spill_bytes} | {r.shared_bytes} | {r.threads or '?'} | "
            f"{'' if r.occupancy is None else f'{100 * r.occupancy:.0f}%'} | {r.instructions} | "
            f"{share(r.ffma, r.instructions)} | {share(r.integer, r.instructions)} | "
            f"{r.global_loads} | {r.shared_loads} | {r.loop_instructions} | "
            f"{share(r.loop_ffma, r.loop_instructions)} | "
            f"{share(r.loop_integer, r.loop_instructions)} |")
    return "\n".join(lines) + "\n"
