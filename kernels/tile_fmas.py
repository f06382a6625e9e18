"""The register tiles' multiply-adds, said in vectors: a tap's input values of a few pixels,
each broadcast, times a row of filter values (broadcast_fmas: the blocked kernels), or a tap's
input vectors, lanes over channels, times its filter vector (lane_fmas: the depthwise ones),
into a tile of pixels x channels held in vector registers.

Written as loops over the pixels and the channels, the tile is packed into vector registers by
LLVM's SLP vectoriser only where its cost model sees the pay-off: on AVX-512 (16 lanes) it did
for every tile, on AVX2 (8 lanes) it left tiles of 4-8 pixels of one or two vectors scalar,
32-64 scalar FMAs and their spills a tap (seen in their machine code compiled for Haswell, on
this project's Zen 5: the weight gradient of ResNeXt's 4-channel groups ran 3.7x slower than
said in vectors, a forward row tile of 8 pixels at ~20 GFLOP/s, one of 10 at 140-180). Said in
vectors the tap loop is small enough for LLVM's runtime unroller, whose second copy's
broadcasts, hoisted above the first's FMAs, spilled the 10-tap x 2-vector weight tile
(ResNet-18's weight gradients 1.4-1.6x slower): so broadcast_fmas writes the loop too, marked
not to be unrolled. On AVX-512 that loop still kept a register copy of each accumulator a tap
(the 8-pixel x 2-vector row tile: 16 ``vmovaps`` beside its 16 FMAs, LLVM's coalescing of the
loop's exit values), where LLVM's own vectorisation of the loops has none: the blocked kernels
take broadcast_fmas on AVX2 only, and for their half-vector tiles on AVX-512 (which LLVM left
scalar: kernels/conv_blocked.py's _accumulate), the depthwise ones lane_fmas on both.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils, errors
from numba.extending import intrinsic

from . import VECTOR_LANES, fetch_line

VECTOR = VECTOR_LANES


def _no_unroll(module):
    """The loop metadata that keeps LLVM from unrolling a loop (its first operand itself, as
    LLVM asks of a loop's identity)."""
    loop = module.add_metadata([module.add_metadata([ir.MetaDataString(
        module, "llvm.loop.unroll.disable")])])
    loop.operands = (loop,) + loop.operands
    return loop


def _tile_code(context, builder, signature, args, arrays, lanes=VECTOR, typed=1):
    """What the intrinsics' code builds on: (element pointer of array argument i at indices,
    the same as a pointer to a vector of ``lanes``, the vector type, its elements' size in
    bytes, LLVM's multiply-add on it), for the array arguments ``arrays`` (positions); the
    element type is argument ``typed``'s."""
    kinds = signature.args
    made = {i: context.make_array(kinds[i])(context, builder, args[i]) for i in arrays}
    element = context.get_value_type(kinds[typed].dtype)
    vector, size = ir.VectorType(element, lanes), context.get_abi_sizeof(element)
    fmuladd = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector, [vector] * 3),
        f"llvm.fmuladd.v{lanes}f{8 * size}")

    def at(position, *indices):
        """A pointer to element ``indices`` of argument ``position`` (no wraparound)."""
        return cgutils.get_item_pointer(context, builder, kinds[position], made[position],
                                        indices)

    def vector_at(position, *indices):
        return builder.bitcast(at(position, *indices), vector.as_pointer())
    return at, vector_at, vector, size, fmuladd


@intrinsic
def broadcast_fmas(typingctx, acc, a, bases, offsets, rows, start, stop, pixels, width, ahead):
    """acc[j, v] += a[bases[j] + offsets[t]] * rows[t, v] for start <= t < stop, j < ``pixels``
    and v < ``width`` (compile-time constants, width a multiple of VECTOR or a part of one: a
    half-vector tile), taps in order: per tap, one load of rows' values a vector (of VECTOR
    channels, or of all ``width``), then per pixel one load of a's value, broadcast, and a
    packed multiply-add (fused where the CPU has FMA) a vector. acc (pixels,
    width) is a stack array (kernels.stack_array), which LLVM keeps in registers across the
    loop; rows (> t, width) a 2-D array of a's dtype whose rows have unit stride (C-contiguous,
    or columns of one: kernels/gemm.py's gemm_short); a, bases and offsets 1-D;
    offsets and bounds unsigned. Where ``ahead`` (a compile-time constant) is not 0, each tap
    also asks for the lines of rows[t, width:width + ahead], one a vector, to be brought into
    L2 (never faulting past rows' end): the next tile's columns, for gemm_short, whose rows lie
    a plane apart, more streams than the hardware's prefetchers follow."""
    literals = (pixels, width, ahead)
    if not all(isinstance(value, types.IntegerLiteral) for value in literals):
        raise errors.RequireLiteralValue(literals)
    count, lanes, fetched = (value.literal_value for value in literals)
    step = min(lanes, VECTOR)
    if lanes % VECTOR and VECTOR % lanes:
        raise errors.TypingError(f"broadcast_fmas' width is a multiple or a part of {VECTOR}, "
                                 f"not {lanes}")

    def codegen(context, builder, signature, args):
        kinds, index = signature.args, ir.IntType(64)
        at, vector_at, vector, size, fmuladd = _tile_code(context, builder, signature, args,
                                                          range(5), step)
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), step), [0] * step)
        first, last = (context.cast(builder, args[i], kinds[i], types.uint64) for i in (5, 6))
        entry = builder.block
        test, loop, done = (builder.append_basic_block(f"taps.{part}")
                            for part in ("test", "body", "end"))
        builder.branch(test)
        builder.position_at_end(test)
        t = builder.phi(index)
        t.add_incoming(first, entry)
        builder.cbranch(builder.icmp_unsigned("<", t, last), loop, done)
        builder.position_at_end(loop)
        offset = builder.load(at(3, t))
        rows = [builder.load(vector_at(4, t, ir.Constant(index, v0)), align=size)
                for v0 in range(0, lanes, step)]
        for v0 in range(lanes, lanes + fetched, step):
            fetch_line(builder, at(4, t, ir.Constant(index, v0)), locality=2)
        for j in range(count):
            value = builder.load(at(1, builder.add(builder.load(at(2, ir.Constant(index, j))),
                                                   offset)))
            one = builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                         ir.Constant(ir.IntType(32), 0))
            broadcast = builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined), zeros)
            for i, row in enumerate(rows):
                pointer = vector_at(0, ir.Constant(index, j), ir.Constant(index, i * step))
                total = builder.call(fmuladd, [broadcast, row, builder.load(pointer, align=size)])
                builder.store(total, pointer, align=size)
        t.add_incoming(builder.add(t, ir.Constant(index, 1)), builder.block)
        builder.branch(test).set_metadata("llvm.loop", _no_unroll(builder.module))
        builder.position_at_end(done)
        return context.get_dummy_value()
    return types.void(acc, a, bases, offsets, rows, start, stop, pixels, width, ahead), codegen


@intrinsic
def lane_fmas(typingctx, acc, src, start, step, filters, t, first, last, pixels):
    """acc[j, v] += src[start + j * step + v] * filters[t, v] for j < ``pixels`` (a
    compile-time constant) and v < VECTOR, pixel 0 only where ``first`` is true and pixel
    pixels - 1 only where ``last`` is: one tap of a depthwise tile, its lanes the channels,
    its pixels ``step`` apart (VECTOR in a blocked buffer, the channels times the stride in an
    NHWC image), as one load of the filters' vector and per pixel a vector load and a packed
    multiply-add. The flags leave out a row's edge pixels where the tap lies in the padding
    (a branch each, never a load there; constants true fold away). acc (pixels, VECTOR) a
    stack array, filters (> t, VECTOR) a 2-D C-contiguous array of src's dtype, src 1-D;
    offsets unsigned. Loads of one address in several calls (a window row's taps over one row
    of a buffer) LLVM makes one."""
    if not isinstance(pixels, types.IntegerLiteral):
        raise errors.RequireLiteralValue(pixels)
    count = pixels.literal_value

    def codegen(context, builder, signature, args):
        kinds, index = signature.args, ir.IntType(64)
        _, vector_at, _, size, fmuladd = _tile_code(context, builder, signature, args, (0, 1, 4))
        origin, step, tap = (context.cast(builder, args[i], kinds[i], types.uint64)
                             for i in (2, 3, 5))
        edge_first, edge_last = (context.cast(builder, args[i], kinds[i], types.boolean)
                                 for i in (6, 7))
        row = builder.load(vector_at(4, tap, ir.Constant(index, 0)), align=size)

        def pixel(j):
            at = builder.add(origin, builder.mul(step, ir.Constant(index, j)))
            value = builder.load(vector_at(1, at), align=size)
            pointer = vector_at(0, ir.Constant(index, j), ir.Constant(index, 0))
            builder.store(builder.call(fmuladd, [value, row, builder.load(pointer, align=size)]),
                          pointer, align=size)
        for j in range(count):
            flags = [edge_first] * (j == 0) + [edge_last] * (j == count - 1)
            if not flags:
                pixel(j)
                continue
            with builder.if_then(builder.and_(flags[0], flags[-1]), likely=True):
                pixel(j)
        return context.get_dummy_value()
    return types.void(acc, src, start, step, filters, t, first, last, pixels), codegen


def _turn(group, by):
    """The shuffle mask that turns a vector by ``by`` lanes inside its groups of ``group``:
    lane v takes lane v - v % group + (v % group + by) % group."""
    return ir.Constant(ir.VectorType(ir.IntType(32), VECTOR),
                       [v - v % group + (v % group + by) % group for v in range(VECTOR)])


@intrinsic
def rotated_fmas(typingctx, acc, src, start, step, filters, t, t_step, pixels, rotations):
    """acc[r * pixels + j, v] += src[start + j * step + v] * filters[t + r * t_step, v] for j <
    ``pixels`` and r < ``rotations`` (compile-time constants) and v < VECTOR: one tap of a
    grouped tile's rotated accumulators (kernels/conv_grouped.py), per pixel one vector load
    and a packed multiply-add into each rotation's accumulator, each rotation's filter vector
    loaded once. acc (rotations * pixels, VECTOR) a stack array, filters 2-D C-contiguous of
    src's dtype, src 1-D; offsets unsigned."""
    if not (isinstance(pixels, types.IntegerLiteral)
            and isinstance(rotations, types.IntegerLiteral)):
        raise errors.RequireLiteralValue((pixels, rotations))
    count, turns = pixels.literal_value, rotations.literal_value

    def codegen(context, builder, signature, args):
        kinds, index = signature.args, ir.IntType(64)
        _, vector_at, _, size, fmuladd = _tile_code(context, builder, signature, args, (0, 1, 4))
        origin, step, tap, tap_step = (context.cast(builder, args[i], kinds[i], types.uint64)
                                       for i in (2, 3, 5, 6))
        rows = [builder.load(vector_at(4, builder.add(tap, builder.mul(
            tap_step, ir.Constant(index, r))), ir.Constant(index, 0)), align=size)
            for r in range(turns)]
        for j in range(count):
            at = builder.add(origin, builder.mul(step, ir.Constant(index, j)))
            value = builder.load(vector_at(1, at), align=size)
            for r, row in enumerate(rows):
                pointer = vector_at(0, ir.Constant(index, r * count + j), ir.Constant(index, 0))
                builder.store(builder.call(fmuladd, [value, row, builder.load(pointer,
                                                                               align=size)]),
                              pointer, align=size)
        return context.get_dummy_value()
    return types.void(acc, src, start, step, filters, t, t_step, pixels, rotations), codegen


@intrinsic
def rotations_summed(typingctx, acc, pixels, rotations):
    """acc[j, v] = the sum over r < ``rotations`` of acc[r * pixels + j, u] with u = v - v %
    rotations + (v % rotations - r) % rotations, for j < ``pixels`` (both compile-time
    constants): a grouped tile's rotated accumulators brought home, each rotated back within
    its groups of ``rotations`` lanes by one constant shuffle (vpermilps, or vpermps where a
    group spans 128-bit halves) once a tile, not once a tap (kernels/conv_grouped.py)."""
    if not (isinstance(pixels, types.IntegerLiteral)
            and isinstance(rotations, types.IntegerLiteral)):
        raise errors.RequireLiteralValue((pixels, rotations))
    count, turns = pixels.literal_value, rotations.literal_value

    def codegen(context, builder, signature, args):
        _, vector_at, vector, size, _ = _tile_code(context, builder, signature, args, (0,),
                                                   typed=0)
        index, undefined = ir.IntType(64), ir.Constant(vector, ir.Undefined)
        for j in range(count):
            home = vector_at(0, ir.Constant(index, j), ir.Constant(index, 0))
            total = builder.load(home, align=size)
            for r in range(1, turns):
                turned = builder.load(vector_at(0, ir.Constant(index, r * count + j),
                                                ir.Constant(index, 0)), align=size)
                total = builder.fadd(total, builder.shuffle_vector(turned, undefined,
                                                                    _turn(turns, -r)))
            builder.store(total, home, align=size)
        return context.get_dummy_value()
    return types.void(acc, pixels, rotations), codegen


@intrinsic
def rotated_products(typingctx, acc, src, start, step, grad, grad_at, inside, taps, rotations,
                     first, turns, checked):
    """acc[r * taps + t, v] += src[start + t * step + v] * grad[grad_at + u] with u = v - v %
    rotations + (v % rotations + first + r) % rotations, for the taps t < ``taps`` (where
    ``checked``, only those whose bit is set in ``inside``; else all, no branch) and r <
    ``turns`` (all five compile-time constants, ``first`` + ``turns`` <= ``rotations``): one
    output pixel's share of a grouped layer's weight gradient over a window row
    (kernels/conv_grouped.py), its gradient vector loaded once and turned by constant
    shuffles, each input vector inside meeting every turn. acc (turns * taps, VECTOR) a stack
    array, src and grad 1-D of one dtype; offsets unsigned (a tap outside, never loaded, may
    wrap)."""
    literals = (taps, rotations, first, turns, checked)
    if not all(isinstance(a, (types.IntegerLiteral, types.BooleanLiteral)) for a in literals):
        raise errors.RequireLiteralValue(literals)
    count, group, offset, kept, masked = (a.literal_value for a in literals)

    def codegen(context, builder, signature, args):
        kinds, index = signature.args, ir.IntType(64)
        _, vector_at, vector, size, fmuladd = _tile_code(context, builder, signature, args,
                                                         (0, 1, 4))
        origin, step, at, inside = (context.cast(builder, args[i], kinds[i], types.uint64)
                                    for i in (2, 3, 5, 6))
        undefined = ir.Constant(vector, ir.Undefined)
        grad = builder.load(vector_at(4, at), align=size)

        factors = [builder.shuffle_vector(grad, undefined, _turn(group, offset + r)) if
                   offset + r else grad for r in range(kept)]
        def tap(t):
            value = builder.load(vector_at(1, builder.add(origin, builder.mul(
                step, ir.Constant(index, t)))), align=size)
            for r, factor in enumerate(factors):
                pointer = vector_at(0, ir.Constant(index, r * count + t), ir.Constant(index, 0))
                builder.store(builder.call(fmuladd, [value, factor, builder.load(
                    pointer, align=size)]), pointer, align=size)
        for t in range(count):
            if not masked:
                tap(t)
                continue
            bit = builder.and_(builder.lshr(inside, ir.Constant(index, t)), ir.Constant(index, 1))
            with builder.if_then(builder.icmp_unsigned("!=", bit, ir.Constant(index, 0)),
                                 likely=True):
                tap(t)
        return context.get_dummy_value()
    return types.void(acc, src, start, step, grad, grad_at, inside, taps, rotations, first,
                      turns, checked), codegen
