"""fastconv's raw Numba kernels: pure compute on arrays the ops layer has validated.

Kernels take NCHW-indexed arrays (an NHWC array arrives as a transposed view) unless their name
says ``nhwc``, explicit integer geometry and preallocated outputs; they never validate. A CPU
kernel file and its CUDA twin share a name, the twin's ending in ``_cuda`` (conv_direct.py,
conv_direct_cuda.py); scalar code both targets run (the activation epilogue, the pooling
window, the Adam update) is written once, in the CPU file, and compiled for the GPU from there.
"""

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
from llvmlite import binding, ir
from numba import config, njit, types
from numba.core import caching, cgutils, errors
from numba.extending import intrinsic

from ..runtime import cache_dir

KERNELS_DIR = str(Path(__file__).resolve().parent)
# float32 lanes of the widest vector registers this CPU has: the register tiles' width.
_HOST_FEATURES = binding.get_host_cpu_features()
VECTOR_LANES = 16 if _HOST_FEATURES.get("avx512f", False) else 8

# LLVM tunes Intel's AVX-512 server cores (Skylake-SP to Sapphire and Emerald Rapids) to prefer
# 256-bit vectors, against the clock drop of 512-bit code, and Numba compiles for the host's
# tuning: there the register tiles sized for 16 lanes compile to 256-bit FMAs (under
# NUMBA_CPU_NAME=sapphirerapids the row tile's 21 zmm FMAs become 14 ymm ones) and the blocked
# kernels ran at 29-42% of SGEMM on an Emerald Rapids Xeon, where they reach 68-86% on Zen 5
# (benchmarks/results/gpu.md). On every AVX-512 CPU Numba therefore compiles with the host's
# features and that preference off; a user's NUMBA_CPU_NAME or NUMBA_CPU_FEATURES is left as
# it is. Set in the environment, as Numba's compiler reloads its config from there; code Numba
# compiles after fastconv's import, the user's own too, gets full-width vectors.
FULL_WIDTH_VECTORS = (VECTOR_LANES == 16 and "NUMBA_CPU_NAME" not in os.environ
                      and "NUMBA_CPU_FEATURES" not in os.environ)
if FULL_WIDTH_VECTORS:
    os.environ["NUMBA_CPU_FEATURES"] = _HOST_FEATURES.flatten() + ",-prefer-256-bit"
    config.reload_config()


def vectors() -> str:
    """The register tiles' vector width and how Numba was told to compile them, for
    ``fastconv info`` and the bench headers."""
    if VECTOR_LANES == 8:
        return "256-bit (8 float32 lanes: AVX2)"
    how = ("LLVM's prefer-256-bit tuning turned off by fastconv" if FULL_WIDTH_VECTORS else
           "NUMBA_CPU_NAME / NUMBA_CPU_FEATURES as set, which may prefer 256-bit")
    return f"512-bit (16 float32 lanes: AVX-512; {how})"

# How every parallel CPU kernel is compiled (kernels/variants.py keeps these options for its
# single-threaded twins). fastmath's reassociation lets LLVM vectorise sums, contraction fuse
# multiply-adds, "arcp" divide by reciprocals; "nnan" and "ninf" stay off, so NaN and Inf
# propagate as in PyTorch (with them LLVM may fold max(NaN, 0) to 0, or a NaN test to false),
# and so does "nsz", which cost the pooling kernels up to 20% here. Numba's default (Python's)
# error model raises on a division by zero, but no kernel here divides by one: a pooling window
# counts at least one cell, a sigmoid's denominator is at least 1 or NaN; Adam's update can (eps
# 0), so it takes NumPy's model (kernels/optim.py). NumPy's model for all cost the pooling
# kernels 10-25%. Measured: benchmarks/results/reliability.md.
CPU_KERNEL = dict(parallel=True, cache=True, fastmath={"reassoc", "contract", "arcp"})
# Numba keys its cache by each kernel file's stamp, not by the options above, so the cache
# folder is named by them: changing them cannot load machine code compiled under others.
_OPTIONS_TAG = hashlib.sha1(json.dumps(CPU_KERNEL, sort_keys=True, default=sorted).encode())
_OPTIONS_TAG = _OPTIONS_TAG.hexdigest()[:8]


# A relative import of this package: "from .name import ..." or "from . import a, b".
_IMPORT = re.compile(r"^from \.(\w*) import (?:\(([^)]*)\)|([\w, ]+))", re.M)


@functools.cache
def _file_facts(path: str, mtime_ns: int, size: int) -> tuple[bytes, tuple[str, ...]]:
    """(sha256 of the file's bytes, the files of its folder it imports from relatively), for
    a file of that stat (a file edited while the process runs is read again)."""
    text = Path(path).read_bytes()
    folder, found = Path(path).parent, []
    for module, listed, names in _IMPORT.findall(text.decode()):
        names = listed or names
        if module:
            found.append(folder / f"{module}.py")
        else:  # "from . import a, b": submodules, or names the package's __init__ holds
            for name in (n.strip() for n in names.split(",") if n.strip()):
                sub = folder / f"{name}.py"
                found.append(sub if sub.exists() else folder / "__init__.py")
    return hashlib.sha256(text).digest(), tuple(str(f) for f in found if f.exists())


def source_stamp(path) -> str:
    """A digest of a kernel file and of every file of its folder it imports from, recursively
    (relative imports only): the stamp fastconv's kernel caches are checked against. Numba's
    own stamp is the kernel's file alone, so a kernel inlining an intrinsic of another file
    (kernels/vector_moves.py's, say) kept its machine code from before that file changed."""
    seen, todo, digest = set(), [str(Path(path).resolve())], hashlib.sha256()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        stat = os.stat(name)
        content, imports = _file_facts(name, stat.st_mtime_ns, stat.st_size)
        digest.update(content)
        todo.extend(sorted(imports))
    return digest.hexdigest()


def cache_locator(module):
    """A Numba cache locator (for ``module``, numba.core.caching or numba-cuda's twin of it)
    that keeps the compiled kernels of this package under cache_dir()/numba, where a user's
    caches go (in a folder named by CPU_KERNEL's options), not next to the kernels' files
    (Numba's default), where an installed package's folder may be read-only and uninstalling
    leaves them behind; its entries are checked against :func:`source_stamp`. It applies to
    fastconv's kernels only, and steps aside where the user set NUMBA_CACHE_DIR or the folder
    cannot be written (Numba's own locators then decide)."""
    base = module.UserProvidedCacheLocator if hasattr(module, "UserProvidedCacheLocator") else (
        module._UserProvidedCacheLocator)

    class KernelCacheLocator(base):
        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(cache_dir(), "numba", _OPTIONS_TAG,
                                            self.get_suitable_cache_subpath(py_file))

        def get_source_stamp(self):
            return source_stamp(self._py_file)

        @classmethod
        def from_function(cls, py_func, py_file):
            if config.CACHE_DIR or not os.path.realpath(py_file).startswith(
                    KERNELS_DIR + os.sep):
                return None
            locator = super(base, cls).from_function(py_func, py_file)
            try:
                locator.ensure_cache_path()
            except OSError:
                return None
            return locator
    return KernelCacheLocator


def install_cache_locator(module):
    """Put :func:`cache_locator` first among ``module``'s locators (once)."""
    classes = module.CacheImpl._locator_classes
    if not any(getattr(c, "__name__", "") == "KernelCacheLocator" for c in classes):
        classes.insert(0, cache_locator(module))


install_cache_locator(caching)


def cuda_simulated() -> bool:
    """Whether Numba's CUDA simulator stands in for the GPU in this process: fastconv's one
    answer, from the switch (NUMBA_ENABLE_CUDASIM=1) numba reads once, when it is imported."""
    return bool(config.ENABLE_CUDASIM)


@intrinsic
def stack_array(typingctx, rows, columns, dtype):
    """A (rows x columns)-element array on the stack (both compile-time constants), and VECTOR_LANES
    elements of slack after it, so that a vector load from any of its elements stays inside (a
    tile of half a vector a row, transposed by whole vectors). LLVM promotes it to registers
    where every index into it is a constant after unrolling; a heap array (np.empty) it never
    does, as its memory might alias the kernel's arguments."""
    if not (isinstance(rows, types.IntegerLiteral) and isinstance(columns, types.IntegerLiteral)):
        raise errors.RequireLiteralValue((rows, columns))
    count = rows.literal_value * columns.literal_value + VECTOR_LANES
    element = dtype.dtype

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(element), size=count)
    return types.CPointer(element)(rows, columns, dtype), codegen


def fetch_line(builder, pointer, locality=3):
    """The code asking for the cache line at ``pointer`` to be brought in for reading, without
    waiting for it (llvm.prefetch: never faults, whatever the address): into L1 (locality 3),
    or into L2 only (2)."""
    int32 = ir.IntType(32)
    fetch = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [ir.PointerType()] + [int32] * 3),
        "llvm.prefetch.p0")
    builder.call(fetch, [builder.bitcast(pointer, ir.PointerType()), ir.Constant(int32, 0),
                         ir.Constant(int32, locality), ir.Constant(int32, 1)])


@intrinsic
def prefetch(typingctx, a, index):
    """Ask for the cache line holding a[index] (a 1-D array, an unsigned index) to be brought
    into L1 (:func:`fetch_line`)."""
    def codegen(context, builder, signature, args):
        made = context.make_array(signature.args[0])(context, builder, args[0])
        fetch_line(builder, builder.gep(made.data, [args[1]]))
        return context.get_dummy_value()
    return types.void(a, types.uint64), codegen


# The zero offset of the intrinsics' unsigned offsets (Numba types an int64 plus a uint64 as a
# float64).
ZERO = np.uint64(0)

# A cache line: vector loads that start at one's boundary read it once (one straddling two
# reads both: the depthwise tile loop ran 1.6x slower from a 16-byte-aligned buffer here).
LINE_BYTES = 64


@intrinsic
def borrowed(typingctx, a):
    """``a`` without its reference: the same array, its meminfo null, so that passing it to a
    function compiled apart (each such call increfs and decrefs every array argument, an
    atomic add on a count that every thread's views of one array share) costs a null test.
    For views that live inside the kernel call that owns ``a``: never returned or stored.
    depthwise_nhwc_rows' row calls made 84 atomic adds (and as many calls) a row so, ~600 ns:
    an 8 x 28 x 28 x 16 layer ran at a third of PyTorch's speed on one thread of an Intel
    Xeon with AVX-512 (benchmarks/results/cpu-nhwc-depthwise-borrowed.md)."""
    if not isinstance(a, types.Array):
        raise errors.TypingError(f"borrowed takes an array, not {a}")

    def codegen(context, builder, signature, args):
        made = context.make_array(signature.args[0])(context, builder, args[0])
        made.meminfo = cgutils.get_null_value(made.meminfo.type)
        made.parent = cgutils.get_null_value(made.parent.type)
        return made._getvalue()
    return a(a), codegen


@njit(inline="always", cache=True)
def aligned_zeros(size, dtype):
    """A 1-D zeroed array of ``size`` elements starting on a cache line (np.zeros inside a
    kernel aligns to 32 bytes: every other 64-byte vector straddles two lines)."""
    raw = np.zeros(size + LINE_BYTES, dtype)
    skip = (-raw.ctypes.data) % LINE_BYTES // raw.itemsize
    return raw[skip:skip + size]


def tile_starts(lo, hi, pixels):
    """The first columns of tiles of ``pixels`` over [lo, hi) (hi - lo >= pixels), the last
    moved back to end at hi: a row's tiles overlap rather than leave a ragged tail."""
    return [min(s, hi - pixels) for s in range(lo, hi, pixels)]


@njit(inline="always", cache=True)
def valid_range(offset, stride, size, out_size):
    """The indices o in [lo, lo + count) with 0 <= o * stride + offset < size, o < out_size
    (stride > 0), and the cell ``first`` of o = lo: the outputs a tap reaches inside the input,
    or the taps of a window that lie inside it.

    All three are clamped to >= 0: Numba wraps negative indices, and only an index LLVM can
    prove non-negative (a clamped base plus a loop counter from 0) loses that check and lets
    the inner loop vectorise. ``lo`` may exceed ``out_size`` (a tap in the padding of every
    output; ``count`` is then 0): a caller looping up to ``lo`` clips it.
    """
    lo = max(0, (stride - 1 - offset) // stride)
    hi = min(out_size, (size - 1 - offset) // stride + 1)
    return lo, max(0, hi - lo), max(0, lo * stride + offset)
