"""The one module that imports Numba's CUDA target, with what every CUDA kernel file shares:
the kernel decorator, scalar code compiled for the GPU, the launch and its grids.

Kernels are declared lazily (``@kernel`` compiles on first launch): an eager signature compiles
at import, which needs a GPU. Under ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is imported)
the same kernels run in Numba's simulator on NumPy arrays.
"""

import ctypes
import functools
import importlib
import os

import numpy as np

if not hasattr(np, "row_stack"):
    # numba-cuda 0.30 registers an overload of np.row_stack when the CUDA target first loads
    # its registries (the first compile); NumPy 2.5 removed that alias of np.vstack, and the
    # failed lookup then breaks every compile. Restoring the alias is all it needs.
    np.row_stack = np.vstack

from cuda.core import LaunchConfig  # noqa: E402  (numba-cuda's own launch, below)
from cuda.core import launch as core_launch  # noqa: E402
from numba import cuda, int32, types  # noqa: E402  (after the alias it needs)
from numba.cuda.core import caching
from numba.cuda.cudadrv import driver  # noqa: E402

from . import activation, cuda_simulated, install_cache_locator

install_cache_locator(caching)  # before the first @kernel: the GPU's compiled kernels too

__all__ = ["cuda", "kernel", "signature", "device_function", "activate", "block_sum",
           "block_threads", "launch",
           "plane_grid", "flat_grid", "span", "flat", "flat_groups",
           "int32s", "MAX_GRID_Z", "MAX_SPAN"]

# The hardware limit on gridDim.z; kernels with more planes loop over them with stride gridDim.z.
MAX_GRID_Z = 65535


def kernel(*params):
    """``@cuda.jit(cache=True)``, keeping the kernel's parameter kinds for the compile sweep:
    an int n is an n-D array of the kernel's dtype (any layout: NHWC arrives as transposed
    views), "flat" a contiguous 1-D array of the kernel's dtype (an operand's memory, indexed
    through strides passed beside it: see ``flat``), "index1" the same of an int64 array (an
    index array's memory), "index2" a C-contiguous 2-D int64 array (a table), "flatxN" a
    tuple of N "flat" arrays (a list of tensors; the sweep compiles it at N, the most a launch
    passes), "mask1" a 1-D boolean array, "int" an int64, "int32" an int32, "int32xN" a tuple
    of N int32s, "bool" a boolean, "scalar" a number of the kernel's dtype."""
    def declare(fn):
        compiled = cuda.jit(cache=True)(fn)
        compiled.params = params
        return compiled
    return declare


def signature(params, dtype):
    """The Numba signature of a kernel declared with ``params``, for arrays of ``dtype``."""
    number = types.float32 if dtype == "float32" else types.float64
    kinds = {"int": types.int64, "int32": types.int32, "bool": types.boolean, "scalar": number,
             "flat": types.Array(number, 1, "C"),
             "index1": types.Array(types.int64, 1, "C"),
             "index2": types.Array(types.int64, 2, "C"),
             "mask1": types.Array(types.boolean, 1, "A")}
    def kind(p):
        if isinstance(p, int):
            return types.Array(number, p, "A")
        for tuple_of in ("int32", "flat"):
            if p.startswith(tuple_of + "x"):
                return types.UniTuple(kind(tuple_of), int(p[len(tuple_of) + 1:]))
        return kinds[p]
    return types.void(*map(kind, params))


def device_function(fn):
    """The GPU build of scalar code written once for both targets: ``fn`` is an
    ``@njit(inline="always")`` function (or a plain one) calling no other fastconv function."""
    return cuda.jit(device=True, inline="always")(getattr(fn, "py_func", fn))


activate = device_function(activation.activate)


@cuda.jit(device=True, inline="always")
def block_sum(value, shared):
    """The sum of ``value`` over the block's threads (a power of two of them, at most the
    length of the ``shared`` array), returned to every thread."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if t < step:
            shared[t] += shared[t + step]
        cuda.syncthreads()
        step //= 2
    total = shared[0]
    cuda.syncthreads()  # every thread has read it before the next sum overwrites it
    return total


def block_threads(cells, most):
    """Threads for a block striding over rows of ``cells`` cells and summing with block_sum:
    the smallest power of two (at least a warp, at most ``most``) covering a row, so a 7x7
    plane does not leave 207 of 256 threads idle."""
    return min(most, max(32, 1 << (cells - 1).bit_length()))


def plane_grid(rows, cols, planes, block):
    """Grid for a block (bx, by) of threads over (column, row) tiles of ``planes`` planes."""
    bx, by = block
    return (-(-cols // bx), -(-rows // by), min(planes, MAX_GRID_Z))


def flat_grid(total, block):
    """1-D grid and block (bx * by threads) covering ``total`` elements."""
    threads = block[0] * block[1]
    return -(-total // threads), threads


# Elements an operand of one launch may span: kernels index through flat() with 32-bit offsets.
MAX_SPAN = 2**31


def flat_groups(arrays, planes):
    """Per launch, (the group's plane count, the memory and strides (``flat``) of each of
    ``arrays`` for the group's planes), for groups of the ``planes`` planes (the leading
    axis) across which every array spans under MAX_SPAN elements. An array of one plane
    serves every plane: whole, with plane stride 0. A single plane that large is a
    ValueError."""
    def widest(count):
        return max(span(x[:count]) for x in arrays)
    if widest(1) >= MAX_SPAN:
        raise ValueError(f"operands of shapes {[x.shape for x in arrays]}: one plane spans "
                         f"{MAX_SPAN} elements or more")
    group = max(planes, 1)
    while widest(group) >= MAX_SPAN:
        group = -(-group // 2)
    for z in range(0, planes, group):
        count, parts = min(group, planes - z), []
        for x in arrays:
            if x.shape[0] == 1:
                memory, strides = flat(x)
                strides = (int32(0), *strides[1:])
            else:
                memory, strides = flat(x[z:z + count])
            parts += [memory, strides]
        yield count, parts


def int32s(*values):
    """``values`` as a tuple of int32: a kernel's "int32xN" parameter."""
    return tuple(int32(v) for v in values)


def span(x):
    """Elements of memory an array of non-negative strides spans from its first element."""
    if x.size == 0:
        return 0
    return 1 + sum((n - 1) * s for n, s in zip(x.shape, x.strides, strict=True)) // x.itemsize


def flat(x):
    """(x's memory as a contiguous 1-D array from its first element, x's strides in elements
    as int32): a kernel indexes any view through it with 32-bit offsets, where Numba's strided
    indexing costs 64-bit arithmetic on every access. x spans under 2**31 elements."""
    if any(s < 0 for s in x.strides):
        raise ValueError(f"flat: an array of strides {x.strides} (negative ones are not "
                         "supported)")
    xp = importlib.import_module(type(x).__module__.partition(".")[0])  # NumPy or CuPy
    memory = xp.lib.stride_tricks.as_strided(x, (span(x),), (x.itemsize,))
    return memory, int32s(*(s // x.itemsize for s in x.strides))


if cuda_simulated():
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    def _argument(a):
        # The simulator copies a NumPy argument to a fake device and back, which needs a
        # contiguous buffer; wrapped, the kernel reads and writes any view in place, as it
        # does a CuPy view on a GPU. A tuple's arrays (a "flatxN" list of tensors) the
        # simulator would pass as they are: wrapped alike, for the same reading.
        if isinstance(a, tuple):
            return tuple(map(_argument, a))
        return FakeCUDAArray(a) if hasattr(a, "ndim") and a.ndim > 0 else a
else:
    def _argument(a):
        return a


# How launch() reaches the GPU: "numba", the dispatcher's own call, or "direct" (_DirectLaunch).
# Direct stays opt-in (FASTCONV_CUDA_LAUNCH=direct) until a GPU has run the suite through it.
LAUNCH = os.environ.get("FASTCONV_CUDA_LAUNCH", "numba")
if LAUNCH not in ("numba", "direct"):
    raise ValueError(f"FASTCONV_CUDA_LAUNCH must be 'numba' or 'direct', got {LAUNCH!r}")


def launch(kernel, grid, block, stream, *args):
    """kernel[grid, block, stream](*args): every launch of fastconv goes through here."""
    if LAUNCH == "direct" and not cuda_simulated():
        direct = _direct_launch(kernel, stream, args)
        if direct is not None:
            return direct(grid, block, stream, args)
    kernel[grid, block, stream](*(_argument(a) for a in args))


# numba-cuda 0.30's dispatcher spends 250-300 us of host time on a launch of fastconv's kernels
# (measured on an H200, benchmarks/results/gpu.md): it types every argument anew (a CuPy array
# through a DLPack capsule), wraps each array in a StridedMemoryView and converts each of the
# 40-80 kernel parameters in Python. _DirectLaunch does that work once per kernel and argument
# types: it compiles through the dispatcher, keeps the CUDA function, and on each launch only
# lays the arguments out as Numba's kernel ABI wants them (_parameters) and hands them to
# cuda.core's launch, the call the dispatcher itself ends in.
_DIRECT = {}


def _direct_launch(kernel, stream, args):
    """The _DirectLaunch for ``kernel`` on these arguments' types and ``stream``'s device, or
    None where an argument is neither a CuPy array, a number nor a tuple of them."""
    key = (kernel, stream, *map(_type_key, args))
    try:
        return _DIRECT[key]
    except KeyError:
        found = _DIRECT[key] = _DirectLaunch.build(kernel, args)
        return found


def _type_key(a):
    """What Numba's type of ``a`` depends on, read cheaply: its class, and for an array its
    dtype, dimensions and contiguity (Numba's layout)."""
    if type(a) is tuple:
        return tuple(map(_type_key, a))
    if hasattr(a, "__cuda_array_interface__"):
        flags = a.flags
        return type(a), a.dtype.char, a.ndim, flags.c_contiguous, flags.f_contiguous
    return type(a)


class _DirectLaunch:
    """One kernel compiled for one tuple of argument types, launched without the dispatcher."""

    def __init__(self, function, parameters):
        self.function, self.parameters = function, parameters

    @classmethod
    def build(cls, kernel, args):
        if not all(map(_plain, args)):
            return None
        argtypes = tuple(kernel.typeof_pyval(a) for a in args)
        parameters = [_parameters(t) for t in argtypes]
        if None in parameters:
            return None
        compiled = kernel.compile(argtypes)
        return cls(compiled._codelibrary.get_cufunc().kernel, parameters)

    def __call__(self, grid, block, stream, args):
        values = [v for lay_out, a in zip(self.parameters, args, strict=True)
                  for v in lay_out(a)]
        core_launch(_core_stream(stream), _launch_config(grid, block), self.function, *values)


def _plain(a):
    if type(a) is tuple:
        return all(map(_plain, a))
    return (type(a).__module__.startswith("cupy") and hasattr(a, "__cuda_array_interface__")
            or isinstance(a, (int, float, np.generic)))


def _parameters(ty):
    """A function laying a value of Numba type ``ty`` out as the kernel parameters Numba
    compiles it to, as numba-cuda's _Kernel._prepare_args does (None for a type fastconv
    never passes): an array as (meminfo, parent, size, itemsize, data, *shape, *strides in
    bytes), the first two unused on a GPU; a tuple as its items'; an integer or float as the
    ctypes value of its width; a boolean as it is."""
    if isinstance(ty, types.Array):
        return lambda a: (0, 0, a.size, a.itemsize, a.data.ptr, *a.shape, *a.strides)
    if isinstance(ty, types.BaseTuple):
        items = [_parameters(t) for t in ty]
        if None in items:
            return None
        return lambda v: [x for lay_out, item in zip(items, v, strict=True)
                          for x in lay_out(item)]
    if isinstance(ty, types.Integer):
        width = getattr(ctypes, f"c_{ty}")
        return lambda v: (width(v),)
    width = {types.float32: ctypes.c_float, types.float64: ctypes.c_double}.get(ty)
    if width is not None:
        return lambda v: (width(v),)
    if ty == types.boolean:
        return lambda v: (v,)
    return None


@functools.cache
def _core_stream(stream):
    return driver._to_core_stream(stream)


@functools.lru_cache(maxsize=4096)
def _launch_config(grid, block):
    return LaunchConfig(grid=grid, block=block)
