"""float32 stays float32 in the CPU kernels, as the PTX sweep (tests/cuda/test_ptx.py) checks of
the CUDA ones: every kernel the CPU implementations call, compiled for the float32 arguments it
is really called with, does no double-precision arithmetic in its LLVM IR. That covers the
scalar code written once for both targets (the activation epilogue, the pooling window, the
Adam update) and the kernels around it."""

import importlib
import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numba
import numpy as np
import pytest

from fastconv import ops
from fastconv.implementations import driver
from fastconv.kernels import VECTOR_LANES, conv_blocked
from oracle import random

# Sums kept in float64 on purpose, whatever the arrays' dtype (see their docstrings); their
# variants' names (kernels/variants.py) begin with theirs.
FLOAT64_ON_PURPOSE = ("conv2d_backward_bias", "conv2d_backward_weight", "depthwise_planes_weight",
                      "depthwise_nhwc_weight_rows", "block_filters", "softmax_cross_entropy")
# Arithmetic in double precision, a float widened to double, or a double-precision math call.
# Not flagged: integers converted to double for Numba's own shape checks, and the unboxing of
# Python floats (PyFloat_AsDouble, then fptrunc) into float32 scalar arguments.
DOUBLE = re.compile(r"= (?:fadd|fsub|fmul|fdiv|frem|fneg)(?: \w+)* (?:<\d+ x )?double\b"
                    r"|= fpext [^\n]* to (?:<\d+ x )?double\b"
                    r"|call [^\n]*@llvm\.\w+\.(?:v\d+)?f64\b|call double @(?!PyFloat_AsDouble)")
FUNCTION = re.compile(r'^define [^@]*@"?([^"(]+)"?\(.*?^}', re.S | re.M)


def _calls_with_float32(monkeypatch):
    """(kernel, arguments) of every CPU kernel call made by every op on float32 inputs: each
    conv algorithm, layout, stride and activation, the bias gradient, pooling and Adam."""
    calls, real = [], driver.cpu_call

    def spy(kernel, work, *args):
        calls.append((kernel, args))
        return real(kernel, work, *args)
    monkeypatch.setattr(driver, "cpu_call", spy)
    rng = np.random.default_rng(0)
    x, b = random(rng, (2, 3, 7, 7), np.float32), random(rng, (4,), np.float32)
    w = random(rng, (4, 3, 3, 3), np.float32)
    depthwise = random(rng, (3, 1, 3, 3), np.float32)  # the direct kernels' plane-wise path
    ops.conv2d(x, depthwise, random(rng, (3,), np.float32), padding=1, groups=3, algo="direct")
    # the blocked kernels' tiles of every width (conv_blocked.FORWARD), the generic ones at a
    # column step of 3 (4 filters, as w below, take NARROW's half vector on AVX-512)
    for k in (4, VECTOR_LANES, 40):
        filters = random(rng, (k, 3, 3, 3), np.float32)
        ops.conv2d(x, filters, random(rng, (k,), np.float32), stride=3, algo="blocked")
        ops.conv2d_backward_weight(random(rng, (2, k, 5, 5), np.float32), x, filters.shape,
                                   algo="blocked")
    # the one-vector row tiles over every column and every second one (7 outputs a row)
    filters = random(rng, (VECTOR_LANES, 3, 3, 3), np.float32)
    for stride in (1, 2):
        ops.conv2d(random(rng, (2, 3, 5, 6 * stride + 1), np.float32), filters, stride=stride,
                   padding=1, algo="blocked")
    for layout, xs, ws in (("NCHW", x, depthwise), ("NHWC", x.transpose(0, 2, 3, 1).copy(),
                                                  depthwise.transpose(2, 3, 1, 0).copy())):
        kw = dict(stride=2, padding=1, groups=3, data_format=layout, algo="depthwise")
        y = ops.conv2d(xs, ws, b[:3], activation="relu", **kw)  # kernels/conv_depthwise.py
        ops.conv2d_backward_input(y, ws, xs.shape, **kw)
        ops.conv2d_backward_weight(y, xs, ws.shape, **kw)
    # an NHWC layer of whole vectors of channels, read in place (depthwise_nhwc_rows): rows
    # of 14 (two tiles of PIXELS, each with edge flags); a column stride of 3's input
    # gradient's phases, rows of 5 (a narrow row's tile), first (the last call's arguments
    # are the ones compiled below); a column stride of 2's, a row at a time
    # (depthwise_nhwc_stride2_input_rows); the weight gradient (depthwise_nhwc_weight_rows)
    xs = random(rng, (2, 4, 14, VECTOR_LANES), np.float32)
    ws = random(rng, (3, 3, 1, VECTOR_LANES), np.float32)
    kw = dict(padding=1, groups=VECTOR_LANES, data_format="NHWC", algo="depthwise")
    for stride, out in ((3, (2, 2, 5)), (2, (2, 2, 7))):
        ops.conv2d_backward_input(random(rng, out + (VECTOR_LANES,), np.float32), ws, xs.shape,
                                  stride=stride, **kw)
    y = ops.conv2d(xs, ws, random(rng, (VECTOR_LANES,), np.float32), activation="relu", **kw)
    ops.conv2d_backward_input(y, ws, xs.shape, **kw)
    ops.conv2d_backward_weight(y, xs, ws.shape, **kw)
    # an NHWC layer of 4 channels a group (grouped_nhwc_rows): rows of 14, its tiles and the
    # padded edges' single pixels; the input gradient; the weight gradient
    # (grouped_nhwc_weight_rows)
    xs = random(rng, (2, 4, 14, 2 * VECTOR_LANES), np.float32)
    ws = random(rng, (3, 3, 4, 2 * VECTOR_LANES), np.float32)
    kw = dict(padding=1, groups=VECTOR_LANES // 2, data_format="NHWC", algo="grouped")
    y = ops.conv2d(xs, ws, random(rng, (2 * VECTOR_LANES,), np.float32), activation="relu", **kw)
    ops.conv2d_backward_input(y, ws, xs.shape, **kw)
    ops.conv2d_backward_weight(y, xs, ws.shape, **kw)
    for algo in ("direct", "im2col", "blocked"):
        for layout, xs, ws in (("NCHW", x, w), ("NHWC", x.transpose(0, 2, 3, 1).copy(),
                                                w.transpose(2, 3, 1, 0).copy())):
            for stride in (1, 2):
                kw = dict(stride=stride, padding=1, data_format=layout, algo=algo)
                for activation in (None, "relu", "tanh", "sigmoid"):
                    y = ops.conv2d(xs, ws, b, activation=activation, **kw)
                gy = random(rng, y.shape, np.float32)
                ops.conv2d_backward_input(gy, ws, xs.shape, **kw)
                ops.conv2d_backward_weight(gy, xs, ws.shape, **kw)
                ops.conv2d_backward_bias(gy, data_format=layout)
    for kernel_size, stride, padding in ((2, 2, 0), (3, 2, 1)):  # the 2x2 path and the general
        y, indices = ops.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
        ops.max_pool2d_backward(y, x, kernel_size, stride, padding)
        ops.max_pool2d_backward(y, x, kernel_size, stride, padding, indices=indices)
        y = ops.avg_pool2d(x, kernel_size, stride, padding)
        ops.avg_pool2d_backward(y, x.shape, kernel_size, stride, padding)
    param, grad = random(rng, (10,), np.float32), random(rng, (10,), np.float32)
    ops.adam_step(param, grad, np.zeros_like(param), np.zeros_like(param), 1)
    ops.sgd_step(param, grad, np.zeros_like(param), momentum=0.9, weight_decay=0.1,
                 nesterov=True, first_step=True)
    ops.softmax_cross_entropy(random(rng, (4, 10), np.float32), np.arange(4))
    return calls


def _compiled(kernel, args, parallel=False):
    """The kernel compiled afresh for ``args`` (without parallelism unless asked, so the whole
    loop body is in one function), and its signature. Compiled by calling it (on the small
    arrays the ops gave it), so that arguments a kernel takes as compile-time literals are
    typed as such."""
    f = kernel.py_func
    copy = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_ir", f.__defaults__,
                              f.__closure__)
    options = {k: v for k, v in kernel.targetoptions.items() if k not in ("nopython", "cache")}
    compiled = numba.njit(**{**options, "parallel": parallel})(copy)
    compiled(*args)
    [signature] = compiled.signatures
    return compiled, signature


def _llvm_ir(kernel, args):
    """The kernel's own LLVM IR (not its Python wrapper) for ``args``."""
    compiled, signature = _compiled(kernel, args)
    ir = compiled.inspect_llvm(signature)
    return "\n".join(m.group(0) for m in FUNCTION.finditer(ir)
                     if not m.group(1).startswith(("cpython.", "cfunc.")))


def test_float32_cpu_kernels_do_no_double_precision_arithmetic(monkeypatch):
    seen, doubles = {}, {}
    for kernel, args in _calls_with_float32(monkeypatch):
        name = kernel.py_func.__name__
        key = (name, tuple(numba.typeof(a) for a in args))
        if key in seen:
            continue
        ir = seen[key] = _llvm_ir(kernel, args)
        assert ir, name
        found = DOUBLE.findall(ir)
        if name.startswith(FLOAT64_ON_PURPOSE):
            assert found, f"{name} sums in float64 on purpose, and the check can see it"
        elif found:
            doubles[name] = sorted(set(found))[:5]
    assert {name for name, _ in seen} >= {
        "conv2d_forward_nchw", "conv2d_forward_nchw_unit_stride", "conv2d_forward_nchw_tiled",
        "conv2d_forward_nhwc",
        "conv2d_backward_input", "conv2d_backward_weight", "im2col", "col2im",
        "bias_activation", "conv2d_backward_bias", "max_pool2d_forward", "max_pool2d_backward",
        "avg_pool2d_forward", "avg_pool2d_backward", "adam_step", "sgd_step",
        "softmax_cross_entropy", "max_pool2d_backward_indices"}
    assert not doubles, doubles


@pytest.mark.parametrize("dtype", [np.float64])
def test_the_check_sees_double_precision(dtype):
    """The same kernels on float64 arrays are full of it: the regex is not blind."""
    x = random(np.random.default_rng(1), (1, 1, 4, 4), dtype)
    y = np.empty((1, 1, 2, 2), dtype)
    from fastconv.kernels import pool
    assert DOUBLE.search(_llvm_ir(pool.avg_pool2d_forward, (x, y, 2, 2, 2, 2, 0, 0, 0, 0, True, 0)))


def _float32_asm(kernel, monkeypatch):
    """``kernel``'s machine code for this CPU, as the ops call it on float32."""
    [args] = {id(k): a for k, a in _calls_with_float32(monkeypatch) if k is kernel}.values()
    compiled, signature = _compiled(kernel, args)
    return compiled.inspect_asm(signature)


def _packed_fmas(kernel, monkeypatch):
    """The packed float32 FMAs on vector registers (ymm or zmm) in ``kernel``'s machine code for
    this CPU, as the ops call it on float32; fails on any scalar FMA."""
    return _fmas_in(_float32_asm(kernel, monkeypatch))


def _fmas_in(asm):
    """_packed_fmas of machine code already in hand."""
    assert not re.search(r"vfmadd\d+ss", asm)
    return len(re.findall(r"vfmadd\d+ps\s[^\n]*%[yz]mm", asm))


@pytest.mark.parametrize("lanes", sorted(conv_blocked.FORWARD))
def test_blocked_microkernel_is_packed_fmas_on_this_machine(lanes, monkeypatch):
    """The channel-blocked forward's inner loop compiles to the register tile it was written
    for, at each of its widths: at least PIXELS packed FMAs a vector of the tile's width (or
    half-vector: ``vfmadd231ps (mem){1to8}, ymm, ymm`` on AVX-512)."""
    kernel = conv_blocked.FORWARD[lanes]
    vectors = max(1, lanes // conv_blocked.VECTOR)
    assert _packed_fmas(kernel, monkeypatch) >= vectors * conv_blocked.PIXELS


def _weight_tiles():
    return [(vectors, taps) for vectors in sorted({*conv_blocked.WEIGHT_TILES, 1, 2}) for taps in
            conv_blocked.WEIGHT_TILES.get(vectors, (conv_blocked.PIXELS,))]


@pytest.mark.parametrize("vectors, taps", _weight_tiles())
def test_every_weight_tile_is_packed_fmas_on_this_machine(vectors, taps, monkeypatch):
    """Each weight-gradient tile WEIGHT_TILES lists, compiled for a float32 layer whose taps
    weight_taps gives it (``taps`` of them a group, one tile), is at least a packed FMA a tap
    and vector, none scalar."""
    lanes = int(vectors * conv_blocked.VECTOR)
    rng = np.random.default_rng(0)
    x, w = random(rng, (2, taps, 5, 5), np.float32), random(rng, (lanes, taps, 1, 1), np.float32)
    assert conv_blocked.weight_taps(taps, lanes, 4) == taps
    kernel = conv_blocked.backward_weight(lanes, taps)
    calls, real = [], driver.cpu_call
    monkeypatch.setattr(driver, "cpu_call",
                        lambda k, work, *args: calls.append((k, args)) or real(k, work, *args))
    ops.conv2d_backward_weight(random(rng, (2, lanes, 5, 5), np.float32), x, w.shape,
                               algo="blocked")
    [args] = [a for k, a in calls if k is kernel]
    compiled, signature = _compiled(kernel, args)
    asm = compiled.inspect_asm(signature)
    assert not re.search(r"vfmadd\d+s[sd]\s", asm), "a scalar FMA"
    assert len(re.findall(r"vfmadd\d+ps\s[^\n]*%[yz]mm", asm)) >= taps * max(1, vectors)


def test_blocked_row_tiles_are_packed_fmas_on_this_machine(monkeypatch):
    """conv2d_forward_rows, on the 7-pixel row of the ops' stride-1 NCHW calls: a packed FMA per
    pixel of its tile, its broadcasts addressed from one pointer. Seen on the AVX-512 Zen 5
    this was written on: 7 ``vfmadd231ps (mem){1to16}, zmm, zmm`` a tap, reading
    ``(%rbx,%rcx,4)``, ``4(%rbx,%rcx,4)``, ... ``24(%rbx,%rcx,4)``."""
    pixels = conv_blocked.row_pixels(7, conv_blocked.VECTOR, 4)
    kernel = conv_blocked.forward_rows(conv_blocked.VECTOR, pixels, 1)
    assert _packed_fmas(kernel, monkeypatch) >= pixels


def test_blocked_row_tiles_over_every_second_column_are_packed_fmas(monkeypatch):
    """conv2d_forward_rows compiled for a column step of 2 (stride-2 NCHW layers), on a 7-pixel
    row: as many packed FMAs as with step 1, its broadcasts 8 bytes apart from one pointer."""
    pixels = conv_blocked.row_pixels(7, conv_blocked.VECTOR, 4)
    if pixels is None:
        pytest.skip(f"no row tile of {conv_blocked.VECTOR} lanes fits 7 columns (ROW_TILES)")
    kernel = conv_blocked.forward_rows(conv_blocked.VECTOR, pixels, 2)
    assert _packed_fmas(kernel, monkeypatch) >= pixels


def _row_tiles():
    return [(vectors, pixels) for vectors, lengths in conv_blocked.ROW_TILES.items()
            for pixels in lengths]


def _row_tile_cases():
    """(vectors, pixels, column step, layout): every row tile at NCHW's column steps, and the
    tile of an RGB stem of 32 channels at its NHWC column steps (3 channels a pixel)."""
    stem = conv_blocked.row_pixels(16, 2 * conv_blocked.VECTOR, 4)
    return ([(vectors, pixels, step, "NCHW") for vectors, pixels in _row_tiles()
             for step in (1, 2)] + [(2, stem, step, "NHWC") for step in (3, 6)])


@pytest.mark.parametrize("vectors, pixels, col_step, layout", _row_tile_cases())
def test_every_row_tile_stays_in_vector_registers(vectors, pixels, col_step, layout,
                                                  monkeypatch):
    """Each row tile ROW_TILES lists, compiled for the float32 NCHW layer that takes it (a row
    of exactly its length, at column stride 1 and 2; an NHWC stem's at 3 and 6), runs its taps
    as packed FMAs (none
    scalar), its broadcasts addressed from one pointer and a constant (each address register
    pair serves a whole tile's pixels), and moves the tile by whole vectors: no gather or
    scatter anywhere. The 16-pixel tile of one vector once started from its bias by 16
    scatters a tile and ran LeNet-sized stems at 0.6x PyTorch's speed, while the 7-pixel tile
    the test above checks was fine; a version of the kernel with two inlined copies of the
    tap loop took an index register a pixel at column stride 2 (some spilled) and ran
    ResNeXt's strided grouped layer 1.15x slower."""
    lanes = int(vectors * conv_blocked.VECTOR)
    assert conv_blocked.row_pixels(pixels, lanes, 4) == pixels
    kernel = conv_blocked.forward_rows(lanes, pixels, col_step)
    calls, real = [], driver.cpu_call
    monkeypatch.setattr(driver, "cpu_call",
                        lambda k, work, *args: calls.append((k, args)) or real(k, work, *args))
    rng = np.random.default_rng(0)
    stride = col_step // 3 if layout == "NHWC" else col_step
    x, w = random(rng, (1, 3, 3, pixels * stride), np.float32), random(rng, (lanes, 3, 3, 3),
                                                                       np.float32)
    if layout == "NHWC":
        x, w = x.transpose(0, 2, 3, 1).copy(), w.transpose(2, 3, 1, 0).copy()
    ops.conv2d(x, w, random(rng, (lanes,), np.float32), stride=(1, stride), padding=1,
               data_format=layout, algo="blocked")
    [args] = [a for k, a in calls if k is kernel]
    compiled, signature = _compiled(kernel, args)
    asm = compiled.inspect_asm(signature)
    assert not re.search(r"vfmadd\d+s[sd]\s", asm), "a scalar FMA"
    assert not re.search(r"v(p?gather|p?scatter)\w*\s", asm), "a gather or scatter"
    assert len(re.findall(r"vfmadd\d+ps\s[^\n]*%[yz]mm", asm)) >= pixels * max(1, vectors)
    # a broadcast is an FMA's {1toN} operand (one vector) or a vbroadcastss (two)
    addresses = re.findall(r"(?:vfmadd\d+ps|vbroadcastss)\s+-?\d*\((%\w+),(%\w+),\d\)"
                           r"(?:\{1to\d+\}|, %[yz]mm\d+$)", asm, re.M)
    assert addresses and len(addresses) >= pixels * len(set(addresses)), set(addresses)


def test_gemm_short_tile_stays_in_vector_registers(monkeypatch):
    """gemm_short's register tile, compiled for the float32 product an NCHW 1x1 layer hands
    it, serially and in parallel: a packed FMA a row of the tile and vector a step, and no
    float32 moved an element at a time (the tile once started from zeros set in a loop: 48
    scalar moves to the stack, each of the reduction's first vector loads of the tile waiting
    on 16 of them, ResNet-50's 64 -> 64 layer at 0.6x the speed; with its columns sliced
    inside the loop of row blocks, it compiled to 48 such moves and 1000 vector ones) and no
    gather or scatter; gemm_short's reduction step asks for the next tile's lines into L2
    (prefetcht1, one a vector), gemm_short_unfetched's for none. On AVX2, where the driver
    keeps BLAS (driver.SHORT_TILES), the tile as it would compile."""
    from fastconv.kernels import gemm
    monkeypatch.setattr(driver, "SHORT_TILES", True)
    calls, real = [], driver.cpu_call
    monkeypatch.setattr(driver, "cpu_call",
                        lambda k, work, *args: calls.append((k, args)) or real(k, work, *args))
    rng = np.random.default_rng(0)
    x, w = random(rng, (2, 16, 14, 14), np.float32), random(rng, (24, 16, 1, 1), np.float32)
    ops.conv2d(x, w, algo="im2col")
    [args] = [a for k, a in calls if k is gemm.gemm_short_unfetched]
    vectors = gemm.SHORT_COLUMNS // VECTOR_LANES
    for kernel, fetched in ((gemm.gemm_short, vectors), (gemm.gemm_short_unfetched, 0)):
        for parallel in (False, True):
            compiled, signature = _compiled(kernel, args, parallel=parallel)
            asm = compiled.inspect_asm(signature)
            assert not re.search(r"vmovss\s", asm), "a float32 moved an element at a time"
            assert not re.search(r"v(p?gather|p?scatter)\w*\s", asm), "a gather or scatter"
            assert _fmas_in(asm) >= gemm.SHORT_ROWS * vectors
            assert len(re.findall(r"^\s+prefetcht1\s", asm, re.M)) == fetched


def test_gemm_tall_tile_stays_in_vector_registers(monkeypatch):
    """gemm_tall's register tile, compiled for the float32 product an NHWC 1x1 layer hands it
    (its pixels times its filters), serially and in parallel: a packed FMA a row of the tile
    and vector a step, no float32 moved an element at a time, no gather or scatter. On AVX2,
    where the driver keeps BLAS (driver.SHORT_TILES), the tile as it would compile."""
    from fastconv.kernels import gemm
    monkeypatch.setattr(driver, "SHORT_TILES", True)
    calls, real = [], driver.cpu_call
    monkeypatch.setattr(driver, "cpu_call",
                        lambda k, work, *args: calls.append((k, args)) or real(k, work, *args))
    rng = np.random.default_rng(0)
    x = random(rng, (2, 14, 14, 32), np.float32)
    w = random(rng, (1, 1, 32, gemm.TALL_COLUMNS), np.float32)
    ops.conv2d(x, w, data_format="NHWC", algo="im2col")
    [args] = [a for k, a in calls if k is gemm.gemm_tall]
    for parallel in (False, True):
        compiled, signature = _compiled(gemm.gemm_tall, args, parallel=parallel)
        asm = compiled.inspect_asm(signature)
        assert not re.search(r"vmovss\s", asm), "a float32 moved an element at a time"
        assert not re.search(r"v(p?gather|p?scatter)\w*\s", asm), "a gather or scatter"
        assert _fmas_in(asm) >= gemm.TALL_ROWS * gemm.TALL_COLUMNS // VECTOR_LANES


def test_direct_tiled_microkernel_is_packed_fmas_on_this_machine(monkeypatch):
    """The direct kernels' stride-1 register tile: a packed FMA per vector of the tile."""
    from fastconv.kernels import conv_direct
    fmas = _packed_fmas(conv_direct.conv2d_forward_nchw_tiled, monkeypatch)
    assert fmas >= conv_direct.TILE_ROWS


def test_depthwise_microkernel_is_packed_fmas_on_this_machine(monkeypatch):
    """The depthwise register tile (kernels/conv_depthwise.py): a packed FMA per pixel of the
    tile, on one vector of channels. Seen on the AVX-512 Zen 5 this was written on: 184 packed
    zmm FMAs in depthwise_planes (its _tiles three times: a 3x3 window's 9 taps x 8 pixels
    unrolled, the loop over any other window's taps unrolled in part, and 3 window rows x 3
    taps x 8 pixels where each row's taps lie in consecutive vectors), 27 in
    depthwise_planes_weight (its 9 taps x 3 unrolled outputs); compiled for Haswell (AVX2)
    there, 168 and 9 on ymm registers, where the tiles written as loops were 192 scalar FMAs."""
    from fastconv.kernels import conv_depthwise
    assert _packed_fmas(conv_depthwise.depthwise_planes, monkeypatch) >= conv_depthwise.PIXELS
    assert _packed_fmas(conv_depthwise.depthwise_planes_weight,
                        monkeypatch) >= conv_depthwise.TAPS


def test_depthwise_nhwc_rows_are_packed_fmas_on_this_machine(monkeypatch):
    """depthwise_nhwc_rows' tiles (its _row_tiles, of PIXELS with and without edge flags, of
    HALF_PIXELS, and of each width of a row narrower than PIXELS, each a vector of channels),
    read from the NHWC image as it lies: a packed FMA per pixel of a tile a tap, no scalar
    FMA; where a 3-wide window's column step is its pixels' (stride 1, no dilation), a window
    row's 3 taps over PIXELS pixels load PIXELS + 2 vectors, not 3 x PIXELS (its other FMAs
    take a register, not memory). Seen on this project's AVX-512 Zen 4: 1403 packed zmm FMAs,
    343 of them from registers (30 while the two steps were separate variables to LLVM: every
    tap loaded its pixels again, and MobileNetV2's stride-1 layers ran 1.01-1.19x slower)."""
    from fastconv.kernels import conv_depthwise as kernels
    asm = _float32_asm(kernels.depthwise_nhwc_rows, monkeypatch)
    fmas = _fmas_in(asm)
    assert fmas >= 2 * kernels.PIXELS + kernels.HALF_PIXELS + sum(kernels.NARROW_WIDTHS)
    from_registers = len(re.findall(r"vfmadd\d+ps\s+%[yz]mm\d+, %[yz]mm\d+, %[yz]mm\d+$", asm,
                                    re.M))
    assert from_registers >= 3 * (2 * kernels.PIXELS - 2), (from_registers, fmas)


def test_grouped_rows_are_packed_fmas_in_registers_on_this_machine(monkeypatch):
    """grouped_nhwc_rows' tiles (kernels/conv_grouped.py: PIXELS_d pixels x d rotated
    accumulators a pixel for each group width d, and single pixels at a row's padded edges):
    per tap, d packed FMAs a pixel, the tile's full-width ones all on registers (its
    accumulators held there across the taps, the input vector loaded once for its d FMAs), and
    at the tile's end d - 1 shuffles a pixel bringing the rotations home. Seen on this
    project's AVX-512 Xeon: 132 packed zmm FMAs, 74 on registers (24 in each full tile's tap
    loop: 12 x 2, 6 x 4, 3 x 8), 62 shuffles, 47 scalar moves (240 more when the 12 x 2 tile's
    bias and sums moved lane by lane; 24 under AVX2)."""
    from fastconv.kernels import conv_grouped as kernels
    asm = _float32_asm(kernels.grouped_nhwc_rows, monkeypatch)
    fmas = _fmas_in(asm)
    tiles = {2: kernels.PIXELS_2, 4: kernels.PIXELS_4, 8: kernels.PIXELS_8}
    assert fmas >= sum(d * pixels + d for d, pixels in tiles.items()), fmas
    from_registers = len(re.findall(r"vfmadd\d+ps\s+%[yz]mm\d+, %[yz]mm\d+, %[yz]mm\d+$", asm,
                                    re.M))
    assert from_registers >= sum(d * pixels for d, pixels in tiles.items()), (from_registers, fmas)
    shuffles = len(re.findall(r"^\s+v(?:perm|shuf)\w*\s", asm, re.M))
    assert shuffles >= sum((d - 1) * pixels for d, pixels in tiles.items()), shuffles
    scalar = len(re.findall(r"^\s+v(?:movss|insertps|extractps)\s", asm, re.M))
    assert scalar < fmas // 2, (scalar, fmas)


def test_grouped_weight_rows_are_packed_fmas_in_registers_on_this_machine(monkeypatch):
    """grouped_nhwc_weight_rows' window-row passes (kernels/conv_grouped.py, for each group
    width d: d x 3 accumulators, 8 x 3 as two passes of 4 x 3, and d x 1): a tap's input
    vector meets each turn of the pixel's output gradient in a packed FMA on registers, the
    accumulators held there over the image; the columns inside the row's taps without a
    branch a tap, its edges' with one. Seen on this project's AVX-512 Xeon: 348 packed zmm
    FMAs, all on registers."""
    from fastconv.kernels import conv_grouped as kernels
    asm = _float32_asm(kernels.grouped_nhwc_weight_rows, monkeypatch)
    passes = [(2, 3), (4, 3), (4, 3), (4, 3), (2, 1), (4, 1), (8, 1)]  # (turns, taps)
    fmas = _fmas_in(asm)
    from_registers = len(re.findall(r"vfmadd\d+ps\s+%[yz]mm\d+, %[yz]mm\d+, %[yz]mm\d+$", asm,
                                    re.M))
    assert from_registers >= sum(t * w for t, w in passes), (from_registers, fmas)
    assert fmas >= 2 * sum(t * w for t, w in passes), fmas


@pytest.mark.parametrize("module, name", [("conv_depthwise", "depthwise_nhwc_rows"),
                                          ("conv_grouped", "grouped_nhwc_rows")])
def test_nhwc_rows_task_loop_stays_parallel(module, name, monkeypatch):
    """depthwise_nhwc_rows' row levels are inlined into its task loop (_row_out and _row:
    their calls, each array argument an atomic reference count, took ~600 ns a row), all
    but _narrow_row, whose literal_unroll there made Numba run the whole loop on one thread,
    saying so only in a warning at compile time; grouped_nhwc_rows' _row is inlined into its
    task loop too, over three group widths."""
    kernel = getattr(importlib.import_module(f"fastconv.kernels.{module}"), name)
    [args] = {id(k): a for k, a in _calls_with_float32(monkeypatch) if k is kernel}.values()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", numba.NumbaPerformanceWarning)
        _compiled(kernel, args, parallel=True)
    serial = [str(w.message) for w in seen if issubclass(w.category, numba.NumbaPerformanceWarning)]
    assert not serial, serial


def test_depthwise_nhwc_stride2_input_rows_are_packed_fmas_on_this_machine(monkeypatch):
    """depthwise_nhwc_stride2_input_rows' two sub-tiles (a tile's even and odd columns, each
    HALF_PIXELS pixels x a vector of channels), a tap meeting the one of its phase: a packed
    FMA per pixel of each, none scalar. Seen on this project's AVX-512 Zen 4: 24 packed zmm
    FMAs (each sub-tile's with and without its edge pixels)."""
    from fastconv.kernels import conv_depthwise as kernels
    assert _packed_fmas(kernels.depthwise_nhwc_stride2_input_rows,
                        monkeypatch) >= 2 * kernels.HALF_PIXELS


@pytest.mark.parametrize("kernel", ["depthwise_planes", "depthwise_nhwc_rows"])
def test_depthwise_activation_pass_is_packed_on_this_machine(kernel, monkeypatch):
    """The depthwise kernels' activation pass (kernels/activation.py's activate_run): a ReLU's
    loop compiled for its code alone, with unsigned indices, compares whole vectors. Seen on
    this project's AVX-512 Zen 4: packed vcmpgeps on zmm and ymm; with the code tested in the
    loop and signed indices none, and a ReLU took ten times the multiply-adds' time."""
    from fastconv.kernels import conv_depthwise
    asm = _float32_asm(getattr(conv_depthwise, kernel), monkeypatch)
    assert re.search(r"vcmp\w*ps\s[^\n]*%[xyz]mm", asm), "no packed compare"


def test_depthwise_nhwc_weight_rows_are_packed_fmas_on_this_machine(monkeypatch):
    """depthwise_nhwc_weight_rows' register tile (TAPS taps x a vector of channels, read from
    the NHWC image and gradient as they lie), for a row's inside columns and for its edge
    columns: packed FMAs, none scalar. Seen on this project's AVX-512 Zen 4: 36 packed zmm
    FMAs (the inside columns' loop unrolled)."""
    from fastconv.kernels import conv_depthwise
    assert _packed_fmas(conv_depthwise.depthwise_nhwc_weight_rows,
                        monkeypatch) >= 2 * conv_depthwise.TAPS


@pytest.mark.parametrize("kernel", ["depthwise_planes_weight", "depthwise_nhwc_weight_rows"])
def test_depthwise_weight_row_sums_are_packed_conversions(kernel, monkeypatch):
    """The depthwise weight gradients add each row's (or run of rows') float32 tile into
    float64 sums: packed conversions (vcvtps2pd), not one scalar conversion and add a lane
    (written as a loop over taps of one over lanes they were, a quarter of its time on
    MobileNetV2's 14x14 layer)."""
    from fastconv.kernels import conv_depthwise
    asm = _float32_asm(getattr(conv_depthwise, kernel), monkeypatch)
    assert not re.search(r"vcvtss2sd\s", asm), "a scalar float32 -> float64 conversion"
    assert re.search(r"vcvtps2pd\s[^\n]*%[yz]mm", asm)


ROW_TILE_WIDTHS = """
import re, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_kernel_ir import _compiled
from fastconv import ops
from fastconv.implementations import driver
from fastconv.kernels import conv_blocked
kernel = conv_blocked.forward_rows(conv_blocked.VECTOR, conv_blocked.row_pixels(7, 16, 4), 1)
calls, real = [], driver.cpu_call
driver.cpu_call = lambda k, work, *args: calls.append((k, args)) or real(k, work, *args)
x = np.random.default_rng(0).standard_normal((2, 3, 7, 7), np.float32)
ops.conv2d(x, x[:1, :, :3, :3].repeat(16, 0), padding=1, algo="blocked")
[args] = {{id(k): a for k, a in calls if k is kernel}}.values()
compiled, signature = _compiled(kernel, args)
asm = compiled.inspect_asm(signature)
print(*(len(re.findall(r"vfmadd\\d+ps\\s[^\\n]*%" + r, asm)) for r in ("zmm", "ymm")))
"""


def test_intel_tuning_compiles_the_row_tile_full_width(tmp_path):
    """LLVM's tuning for Intel's AVX-512 server cores prefers 256-bit vectors, which halved the
    blocked kernels' rate on an Emerald Rapids Xeon; fastconv turns that preference off
    (kernels/__init__.py). Emulated here by compiling for Sapphire Rapids with this CPU's
    features: the row tile is 512-bit FMAs with fastconv's features, 256-bit without."""
    from llvmlite import binding

    from fastconv.kernels import FULL_WIDTH_VECTORS, VECTOR_LANES
    if VECTOR_LANES != 16:
        pytest.skip("needs an AVX-512 CPU, to run code compiled for one")
    assert FULL_WIDTH_VECTORS  # this process: no NUMBA_CPU_NAME or _FEATURES of its own
    assert numba.config.CPU_FEATURES.endswith(",-prefer-256-bit")
    script = ROW_TILE_WIDTHS.format(tests=str(Path(__file__).parent))
    widths = {}
    for features in (numba.config.CPU_FEATURES, binding.get_host_cpu_features().flatten()):
        env = {**os.environ, "NUMBA_CPU_NAME": "sapphirerapids", "NUMBA_CPU_FEATURES": features,
               "NUMBA_CACHE_DIR": str(tmp_path), "FASTCONV_CACHE_DIR": str(tmp_path)}
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        widths[features] = tuple(map(int, run.stdout.split()[-2:]))
    ours, llvms = widths.values()
    assert ours[0] >= 7 and ours[1] == 0, ours  # a zmm FMA per pixel of the 7-pixel tile
    assert llvms[0] == 0 and llvms[1] > 0, llvms
