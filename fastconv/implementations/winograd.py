"""Winograd convolution on the CPU: algo="winograd" for 3x3, stride-1, dilation-1 layers, the
forward (bias and activation in the output transform) and the input gradient (the same
algorithm on gy with the filters turned 180 degrees and their channel axes swapped).

F(TILE x TILE, 3 x 3) (Lavin and Gray, CVPR 2016) in four steps, for a chunk of tile rows at a
time so the workspace stays bounded:

1. the filter transform U = G g G^T of every filter, in float64 and rounded once to the
   call's dtype, in parallel over blocks of filters (kernels/winograd.py, as the next two);
2. the input transform V = B^T d B of every ALPHA x ALPHA input tile, in parallel over tile
   rows and channels (kernels/winograd.py);
3. for each of the ALPHA^2 positions, M = U V summed over a group's input channels: one GEMM
   a position, the positions shared among fastconv's threads (driver.matmul);
4. the output transform A^T M A, plus the bias, through the activation, written into the
   output in the caller's layout, partial edge tiles cropped.

Variants: F(2x2, 3x3) (4x4 tiles, 2.25x fewer multiplies than the direct method) and F(4x4,
3x3) (6x6 tiles, 4x fewer); TILE picks the one algo="winograd" runs (its docstring says why).
Groups run as one GEMM per group and position.

Non-finite values: the transforms add and subtract the values of a tile, so an infinity in
the input (or in gy) or the filters would reach, as +-inf or as NaN (inf - inf), every output
of each tile whose input tile holds it, where PyTorch has a number or an infinity; and a
transform of large finite values may overflow. So the filter and input transforms check
what they write (the sum of each value times 0: NaN where one is not finite), and a call
where a check fails is computed by the blocked kernels instead: winograd's non-finite outputs
are PyTorch's (tests/test_nonfinite.py), and algo="auto" may pick it. The checks cost a
multiply-add per transformed value.
"""

import numpy as np

from ..kernels import winograd as kernels
from ..kernels.activation import CODES
from ..registry import register
from . import driver
from .conv2d import conv2d_backward_input_blocked_cpu, conv2d_blocked_cpu

# The variant algo="winograd" runs: 4, F(4x4, 3x3). Measured on the suite's 3x3 stride-1
# layers at batch 8 (benchmarks/results/cpu-winograd.md): F(4x4) was faster than F(2x2) on the
# 28 x 28 and larger images (to 1.6x: fewer multiplies, and its transforms move less data per
# output), F(2x2) by 5-10% on 14 x 14 and 7 x 7 ones (whose 6x6 tiles waste more at the
# edges); its float32 error, ~3e-6 against float64 (F(2x2) ~5e-7), is within the 1e-4 bound.
# 2 selects F(2x2, 3x3) (the tests run both).
TILE = 4
# Bytes of transformed input tiles per chunk (V; M of the outputs is as large for K = C), so a
# chunk's operands stay in L2 between the transforms and the GEMMs, unless that leaves the
# GEMMs fewer than CHUNK_TILES columns (a 256-channel layer's 1 MiB holds 28 tiles, for which
# OpenBLAS ran VGG-16's 56 x 56 layer's GEMMs at half their speed). On one Xeon thread, 4 MiB
# chunks left ResNet-18's 8 x 64 x 56 x 56 layer's transforms 7.3 ms of 11.9, these 5.7-6.5 of
# 10.4-10.9 (cpu-winograd.md; measured while 9893bcd was written, before its transforms by
# whole vectors: with them, its input and output transforms took 2.7 and 1.9 ms of 9.2).
WORKSPACE_BYTES = 1 << 20
CHUNK_TILES = 128

# The variants' tile sides (the tests run both); their transforms are kernels/winograd.py's.
TILES = (2, 4)


def applies(g):
    """None for a 3x3, stride-1, dilation-1 layer; else why algo="winograd" cannot serve it."""
    if g.plain_3x3:
        return None
    return (f"algo='winograd' computes 3x3 convolutions of stride 1 and dilation 1, not a "
            f"{g.R}x{g.S} window with stride {g.stride} and dilation {g.dilation}")


def filter_transform(w, layout, flip, tile):
    """(U, whether U is finite): U = G g G^T of every filter, (ALPHA^2, K, C/groups) of OIHW
    filters (NCHW) or (ALPHA^2, C/groups, K) of HWIO ones (NHWC), position (a, b) at
    a * ALPHA + b; ``flip`` turns each filter 180 degrees first (the input gradient's)."""
    taps = w.reshape(-1, 9) if layout == "NCHW" else w.reshape(9, -1).T
    if flip:
        taps = taps[:, ::-1]  # (r, s) -> (2 - r, 2 - s)
    # a workspace: ResNet-18's layer4 filters transform into 38 MB; into a fresh array, whose
    # page faults two threads contend for, that took 8.5 ms on two Xeon threads, 2.2 so
    u = driver.workspace(((tile + 2) ** 2, taps.shape[0]), w.dtype, slot=2)
    checks = driver.empty(np, (-(-taps.shape[0] // kernels.LANES),), np.float64)
    driver.cpu_call(kernels.FILTER_TRANSFORM[tile], u.size * 3, taps, u, checks)
    shape = (w.shape[0], w.shape[1]) if layout == "NCHW" else w.shape[2:]
    return u.reshape((-1,) + shape), checks.sum() == 0


def _convolve(g, src, u, in_channels, out_channels, out_hw, pt, pl, transposed, b, activation,
              dst, tile):
    """dst = activation(b + the 3x3 stride-1 convolution of src) by Winograd's F(tile x tile),
    or None where a transformed input tile is not finite (dst then partly written).

    src (N, in_channels, H, W) and dst (N, out_channels, OH, OW) in g.layout; u from
    :func:`filter_transform` of the layer's filters (K, C/groups); ``transposed``: the
    filters map K to C (the input gradient), so each position's matrix is used transposed.
    Input tile row th starts at input row th * tile - pt, column tw * tile - pl."""
    alpha2 = (tile + 2) ** 2
    (oh, ow), n = out_hw, src.shape[0]
    th_, tw_ = -(-oh // tile), -(-ow // tile)
    nchw = g.layout == "NCHW"
    # the NCHW kernels move rows by whole vectors from a C-contiguous array
    src4 = np.ascontiguousarray(src) if nchw else src.transpose(0, 3, 1, 2)
    dst4 = dst if nchw else dst.transpose(0, 3, 1, 2)
    per_row = alpha2 * max(in_channels, out_channels) * tw_ * src.itemsize
    step = max(-(-CHUNK_TILES // tw_), WORKSPACE_BYTES // per_row)
    ig, og = in_channels // g.groups, out_channels // g.groups
    # each group's (position, out, in) matrices as views of u
    mats = []
    for i in range(g.groups):
        if nchw:  # u (P, K, Cg)
            m = u[:, i * og:(i + 1) * og] if not transposed else (
                u[:, i * ig:(i + 1) * ig].transpose(0, 2, 1))
        else:  # u (P, Cg, K)
            m = u[:, :, i * og:(i + 1) * og].transpose(0, 2, 1) if not transposed else (
                u[:, :, i * ig:(i + 1) * ig])
        mats.append(m)
    bias = driver.bias(np, b, out_channels, dst.dtype)
    act = CODES[activation]
    total = n * th_
    forward_in = kernels.INPUT_TRANSFORM[g.layout][tile]
    forward_out = kernels.OUTPUT_TRANSFORM[g.layout][tile]
    for row0 in range(0, total, step):
        tiles = min(step, total - row0) * tw_
        # NCHW: (position, channel, tile); NHWC: (position, tile, channel)
        v = driver.workspace((alpha2, in_channels, tiles) if nchw else
                             (alpha2, tiles, in_channels), src.dtype)
        m = driver.workspace((alpha2, out_channels, tiles) if nchw else
                             (alpha2, tiles, out_channels), src.dtype, slot=1)
        checks = driver.empty(np, (in_channels * kernels.row_groups(tiles // tw_, tw_) if nchw
                                   else tiles,), src.dtype)
        driver.cpu_move(forward_in, alpha2 * in_channels * tiles, src4, v, checks, row0,
                        th_, tw_, pt, pl)
        if checks.sum() != 0:
            return None
        for i, mat in enumerate(mats):
            ins, outs = slice(i * ig, (i + 1) * ig), slice(i * og, (i + 1) * og)
            if nchw:
                driver.matmul(mat, v[:, ins], m[:, outs])
            else:
                driver.matmul(v[:, :, ins], mat.transpose(0, 2, 1), m[:, :, outs])
        driver.cpu_move(forward_out, alpha2 * out_channels * tiles, m, dst4, bias, act,
                        row0, th_, tw_)
    return dst


@register("conv2d", "cpu", "winograd", applies=applies)
def conv2d_winograd_cpu(g, x, w, b, activation):
    u, finite = filter_transform(w, g.layout, False, TILE)
    y = driver.empty(np, g.y_shape, x.dtype)
    if finite and _convolve(g, x, u, g.C, g.K, (g.OH, g.OW), g.padding[0], g.padding[2], False,
                            b, activation, y, TILE) is not None:
        return y
    return conv2d_blocked_cpu(g, x, w, b, activation)


@register("conv2d_backward_input", "cpu", "winograd", applies=applies)
def conv2d_backward_input_winograd_cpu(g, gy, w):
    """gx: gy convolved with the turned, transposed filters, padded by 2 - pad on each side
    (2 - top rows above, and so on; a padding above 2 crops), which makes it x's size."""
    u, finite = filter_transform(w, g.layout, True, TILE)
    gx = driver.empty(np, g.x_shape, gy.dtype)
    if finite and _convolve(g, gy, u, g.K, g.C, (g.H, g.W), 2 - g.padding[0], 2 - g.padding[2],
                            True, None, None, gx, TILE) is not None:
        return gx
    return conv2d_backward_input_blocked_cpu(g, gy, w)
