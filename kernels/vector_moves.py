"""Moves by whole vectors that LLVM does not find in the loops that say them: blocks transposed
in registers (how channel-major tiles, a vector of channels a pixel, and pixel-major planes,
NCHW's rows, trade places), rows of a register tile moved whole, and runs shorter than a
vector moved under a mask.

Written as loops, a transposition compiles to a scalar load and store per element (or gathers),
4-8x slower here: the register tiles' epilogue of kernels/conv_blocked.py, so written, took 2-3x
the instructions of a stem's whole tap loop. A tile whose rows LLVM unrolls before it
vectorises (16 pixels of 16 channels) it filled from a row by scatters, one per channel.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils, errors
from numba.extending import intrinsic

from . import VECTOR_LANES

VECTOR = VECTOR_LANES


def _masked_moves(context, builder, element):
    """(llvm.masked.load, llvm.masked.store, the alignment) for vectors of VECTOR ``element``s."""
    vector = ir.VectorType(element, VECTOR)
    align = ir.Constant(ir.IntType(32), context.get_abi_sizeof(element))
    # the intrinsics' names carry their vector and (opaque) pointer types
    name = f"v{VECTOR}{'f32' if context.get_abi_sizeof(element) == 4 else 'f64'}.p0"
    pointer, mask = ir.PointerType(), ir.VectorType(ir.IntType(1), VECTOR)
    load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector, [pointer, align.type, mask, vector]),
        "llvm.masked.load." + name)
    store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vector, pointer, align.type, mask]),
        "llvm.masked.store." + name)
    return load, store, align


def _lanes_below(builder, limit, offset=0):
    """The mask of the lanes v with offset + v < ``limit`` (an i64)."""
    index = ir.IntType(64)
    lanes = ir.VectorType(index, VECTOR)
    spread = builder.shuffle_vector(
        builder.insert_element(ir.Constant(lanes, ir.Undefined), limit, ir.Constant(index, 0)),
        ir.Constant(lanes, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), VECTOR),
                                                      [0] * VECTOR))
    return builder.icmp_unsigned("<", ir.Constant(lanes, [offset + v for v in range(VECTOR)]),
                                 spread)


@intrinsic
def transpose_block(typingctx, src, src_start, src_step, dst, dst_start, dst_step, rows,
                    stored):
    """dst[dst_start + j * dst_step + i] = src[src_start + i * src_step + j] for i < ``rows``
    (a compile-time constant) and j < ``stored`` (at most VECTOR, at run time: a partial block
    of channels): per VECTOR rows, that many vectors of VECTOR loaded, VECTOR log2(VECTOR)
    two-source shuffles, ``stored`` stores of as many elements, for 1-D arrays of one dtype and
    unsigned offsets. (More rows than VECTOR, a row tile of 10-14 pixels of 8 channels on
    AVX2, go VECTOR at a time.) A step may instead be a 1-D uint64 array of offsets, row i (or
    j) then at start + step[i]: rows that are not evenly spaced (a padded plane's pixels) move
    without a copy through a staging block."""
    if not isinstance(rows, types.IntegerLiteral):
        raise errors.RequireLiteralValue(rows)
    n, count = VECTOR, rows.literal_value
    if count < 1:
        raise errors.TypingError(f"transpose_block moves at least one row, not {count}")

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[3])(context, builder, args[3]).data
        element = context.get_value_type(signature.args[0].dtype)
        vector, width = ir.VectorType(element, n), context.get_abi_sizeof(element)
        index = ir.IntType(64)

        def offsets(position, first):
            """Row first + i's offset from the start: step * (first + i), or step[first + i]
            of an array of them."""
            step = args[position]
            if not isinstance(signature.args[position], types.Array):
                return lambda i: builder.mul(step, ir.Constant(index, first + i))
            data = context.make_array(signature.args[position])(context, builder, step).data
            return lambda i: builder.load(builder.gep(data, [ir.Constant(index, first + i)]))

        def address(data, start, offset, i, kind):
            at = builder.add(start, offset(i))
            return builder.bitcast(builder.gep(data, [at]), kind.as_pointer())

        limit = context.cast(builder, args[7], signature.args[7], types.int64)
        for first in range(0, count, n):
            block = min(n, count - first)
            # rows past ``block`` are never stored: what they hold does not matter
            rows = [builder.load(address(source, args[1], offsets(2, first), i, vector),
                                 align=width)
                    if i < block else ir.Constant(vector, ir.Undefined) for i in range(n)]
            # the step of distance d swaps the off-diagonal d x d blocks of every 2d x 2d block
            d = n // 2
            while d:
                low = ir.Constant(ir.VectorType(ir.IntType(32), n),
                                  [j + n - d if j & d else j for j in range(n)])
                high = ir.Constant(ir.VectorType(ir.IntType(32), n),
                                   [j + n if j & d else j + d for j in range(n)])
                for i in range(n):
                    if not i & d:
                        a, b = rows[i], rows[i + d]
                        rows[i] = builder.shuffle_vector(a, b, low)
                        rows[i + d] = builder.shuffle_vector(a, b, high)
                d //= 2
            part = ir.VectorType(element, block)
            head = ir.Constant(ir.VectorType(ir.IntType(32), block), list(range(block)))
            start = builder.add(args[4], ir.Constant(index, first))
            for j in range(n):
                out = rows[j] if block == n else builder.shuffle_vector(
                    rows[j], ir.Constant(vector, ir.Undefined), head)
                with cgutils.if_likely(builder, builder.icmp_signed("<", ir.Constant(index, j),
                                                                    limit)):
                    builder.store(out, address(target, start, offsets(5, 0), j, part),
                                  align=width)
        return context.get_dummy_value()
    return (types.void(src, src_start, src_step, dst, dst_start, dst_step, rows, stored),
            codegen)


@intrinsic
def move_rows(typingctx, src, src_start, src_step, dst, dst_start, dst_step, rows, width):
    """dst[dst_start + i * dst_step + v] = src[src_start + i * src_step + v] for i < ``rows``
    and v < ``width`` (compile-time constants): ``rows`` vector loads and stores, for 1-D arrays
    of one dtype and unsigned offsets. A source step of 0 repeats one row (a tile's bias)."""
    if not (isinstance(rows, types.IntegerLiteral) and isinstance(width, types.IntegerLiteral)):
        raise errors.RequireLiteralValue((rows, width))
    count, n = rows.literal_value, width.literal_value

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[3])(context, builder, args[3]).data
        element = context.get_value_type(signature.args[0].dtype)
        vector, size = ir.VectorType(element, n), context.get_abi_sizeof(element)

        def address(data, start, step, i):
            at = builder.add(start, builder.mul(step, ir.Constant(ir.IntType(64), i)))
            return builder.bitcast(builder.gep(data, [at]), vector.as_pointer())
        for i in range(count):
            row = builder.load(address(source, args[1], args[2], i), align=size)
            builder.store(row, address(target, args[4], args[5], i), align=size)
        return context.get_dummy_value()
    return types.void(src, src_start, src_step, dst, dst_start, dst_step, rows, width), codegen


@intrinsic
def move_run(typingctx, src, src_start, dst, dst_start, count):
    """dst[dst_start + v] = src[src_start + v] for v < ``count`` (at most VECTOR, at run time):
    a vector load and store where ``count`` is VECTOR, else one masked load and one masked
    store (the lanes past ``count`` neither read nor written), offsets counted in elements from
    each array's first (its data pointer), any dimensions: the caller vouches that the run is
    contiguous. A loop over a run shorter than a vector (a 7- or 14-wide image row) LLVM leaves
    scalar, its vectorised body never entered: the padding copy of ResNeXt's 14x14 layer, so
    written, took 17% of its forward. Masked moves of whole vectors too cost Zen 3 dearly: the
    padding copy of ResNeXt's strided 56x56 layer (8 x 256 x 56 x 56, 7 whole vectors a row)
    took 15.5 ms on one thread, 6.6 ms with the whole vectors moved plain (NumPy's plain copy
    of the same bytes: 5-7 ms), 30% of that layer's forward."""
    if not isinstance(count, types.Integer):
        raise errors.TypingError(f"move_run's count is an integer, not {count}")

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[2])(context, builder, args[2]).data
        element = context.get_value_type(signature.args[0].dtype)
        vector, index = ir.VectorType(element, VECTOR), ir.IntType(64)
        n = context.cast(builder, args[4], signature.args[4], types.uint64)
        mask = _lanes_below(builder, n)
        load, store, align = _masked_moves(context, builder, element)
        src, dst = builder.gep(source, [args[1]]), builder.gep(target, [args[3]])
        with builder.if_else(builder.icmp_unsigned("==", n, ir.Constant(index, VECTOR)),
                             likely=True) as (whole, part):
            with whole:
                builder.store(builder.load(builder.bitcast(src, vector.as_pointer()),
                                           align=align.constant),
                              builder.bitcast(dst, vector.as_pointer()), align=align.constant)
            with part:
                row = builder.call(load, [src, align, mask, ir.Constant(vector, ir.Undefined)])
                builder.call(store, [row, dst, align, mask])
        return context.get_dummy_value()
    return types.void(src, src_start, dst, dst_start, count), codegen


@intrinsic
def interleave_run(typingctx, src, even_start, odd_start, dst, dst_start, count):
    """dst[dst_start + 2 * v] = src[even_start + v] and dst[dst_start + 2 * v + 1] =
    src[odd_start + v] for v < ``count`` (at most VECTOR, at run time): two vector loads, two
    two-source shuffles and two vector stores, masked where ``count`` is less than VECTOR;
    offsets as move_run's. A stride-2 layer's input gradient merges its two column phases so
    (layout.merge_phases); as a loop LLVM compiled the interleaving stores to scalar moves and
    gathers (4.2 ms of ResNeXt's strided 8 x 256 x 56 x 56 merge on two Zen 4 threads, where a
    padding copy of the same bytes took 1.9)."""
    if not isinstance(count, types.Integer):
        raise errors.TypingError(f"interleave_run's count is an integer, not {count}")

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0]).data
        target = context.make_array(signature.args[3])(context, builder, args[3]).data
        element = context.get_value_type(signature.args[0].dtype)
        vector, index = ir.VectorType(element, VECTOR), ir.IntType(64)
        choose = ir.VectorType(ir.IntType(32), VECTOR)
        n = context.cast(builder, args[5], signature.args[5], types.uint64)
        load, store, align = _masked_moves(context, builder, element)
        even, odd = builder.gep(source, [args[1]]), builder.gep(source, [args[2]])
        low = builder.gep(target, [args[4]])
        high = builder.gep(target, [builder.add(args[4], ir.Constant(index, VECTOR))])
        halves = [[v // 2 + half * (VECTOR // 2) + (VECTOR if v % 2 else 0) for v in range(VECTOR)]
                  for half in (0, 1)]

        def interleaved(a, b):
            return [builder.shuffle_vector(a, b, ir.Constant(choose, h)) for h in halves]
        with builder.if_else(builder.icmp_unsigned("==", n, ir.Constant(index, VECTOR)),
                             likely=True) as (whole, part):
            with whole:
                a, b = (builder.load(builder.bitcast(p, vector.as_pointer()), align=align.constant)
                        for p in (even, odd))
                for row, p in zip(interleaved(a, b), (low, high), strict=True):
                    builder.store(row, builder.bitcast(p, vector.as_pointer()),
                                  align=align.constant)
            with part:
                taken = _lanes_below(builder, n)
                a, b = (builder.call(load, [p, align, taken, ir.Constant(vector, ir.Undefined)])
                        for p in (even, odd))
                twice = builder.add(n, n)
                for row, p, offset in zip(interleaved(a, b), (low, high), (0, VECTOR),
                                          strict=True):
                    builder.call(store, [row, p, align, _lanes_below(builder, twice, offset)])
        return context.get_dummy_value()
    return types.void(src, even_start, odd_start, dst, dst_start, count), codegen

