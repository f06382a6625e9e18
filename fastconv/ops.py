"""The validated array-level API: NumPy or CuPy arrays in, the same kind out.

Every argument is checked here, before any kernel runs; bad input raises ValueError or TypeError
naming the argument and the shapes. Inputs are never modified: non-contiguous arrays are copied
to contiguous ones and kernels only write the arrays they allocate; the exceptions are
:func:`adam_step` and :func:`sgd_step`, in-place updates by definition (and batch norm's running
buffers). ``device=None`` runs where the arrays are (see :mod:`fastconv.device`); a CUDA
torch tensor is taken zero-copy.

Layouts: ``data_format="NCHW"`` takes x as (N, C, H, W) and weights as OIHW (K, C/groups, R, S);
``"NHWC"`` takes x as (N, H, W, C) and weights as HWIO (R, S, C/groups, K), TensorFlow's filter
layout. Outputs have the input's layout and dtype (float32 or float64). The padding forms are
described in :mod:`fastconv.geometry`.
"""

import math

import numpy as np

from . import device as devices
from . import dispatch, geometry, rng, runtime
from .dispatch import algorithms
from .registry import refusal

__all__ = [
    "conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
    "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward_input",
    "conv_transpose2d_backward_weight", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward", "max_pool2d_backward_saved", "avg_pool2d",
    "avg_pool2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
    "batch_norm2d", "batch_norm2d_backward", "dropout",
    "dropout_backward", "adam_step", "sgd_step", "softmax_cross_entropy", "matmul",
    "algorithms",
]

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _arrays(device, contiguous=True, **named):
    """The call's device, and each named array checked to be float32/float64, all of one dtype,
    on that device and (where ``contiguous``) C-contiguous."""
    device = devices.resolve(device, **named)
    xp = devices.array_module(device)
    arrays = {name: None if a is None else devices.to_device(a, device)
              for name, a in named.items()}
    for name, a in arrays.items():
        if a is not None and a.dtype not in FLOATS:
            raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"arguments must share one dtype, got {listed}")
    return device, [a if a is None or a.flags.c_contiguous or not contiguous
                    else xp.ascontiguousarray(a) for a in arrays.values()]


def _shape4(name, shape):
    """A 4-D shape: positive ints, but for the batch, which may be 0."""
    if (not isinstance(shape, (tuple, list)) or len(shape) != 4
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                       and s >= (i > 0) for i, s in enumerate(shape))):
        raise ValueError(f"{name} must be 4 ints, positive but for a batch of 0, got "
                         f"{shape!r}")
    return tuple(int(s) for s in shape)


def _expect(name, array, shape, why):
    if array.shape != tuple(shape):
        raise ValueError(f"{name} has shape {array.shape} but {why} needs {tuple(shape)}")


def _algo(algo, device):
    if algo != "auto" and algo not in algorithms(device):
        raise ValueError(f"algo must be 'auto' or one of {algorithms(device)}, got {algo!r}")
    return algo


def _run(op, device, algo, g, dtype, *args):
    if g.N == 0:
        return _empty_batch(op, device, g, dtype, args)

    def signature():
        return f"{g.key()}|{dtype}|{devices.name(device)}"
    with runtime.kernels():
        impl = dispatch.select(op, device, algo, g, signature, lambda fn: fn(g, *args))
        return impl(g, *args)


def _call(op, device, *args):
    """``op``'s one implementation on ``device`` called on ``args``: for ops without a
    geometry or a choice of algorithm."""
    with runtime.kernels():
        return dispatch.select(op, device, "auto", None, None, None)(*args)


def _empty_batch(op, device, g, dtype, args):
    """``op``'s result for a batch of none (N = 0), with no kernel run (a launch over no
    blocks is an error on a GPU): its empty outputs, and zeros for a weight's gradient, as
    PyTorch gives."""
    xp = devices.array_module(device)
    if op == "conv2d_backward_weight":
        return xp.zeros(g.w_shape, dtype)
    if "_backward" in op:
        return xp.empty(g.x_shape, dtype)
    y = xp.empty(g.y_shape, dtype)
    return (y, xp.empty(g.y_shape, np.int64)) if op == "max_pool2d" and args[-1] else y


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
           data_format="NCHW", algo="auto", device=None):
    """2-D cross-correlation with bias and activation fused: ``a(b + sum x * w)``.

    Args:
        x: input, (N, C, H, W) for NCHW or (N, H, W, C) for NHWC.
        w: filters, (K, C/groups, R, S) OIHW for NCHW or (R, S, C/groups, K) HWIO for NHWC.
        b: optional bias, (K,).
        stride, dilation: an int or a pair (sh, sw). Default 1.
        padding: an int, a pair, ((top, bottom), (left, right)), "valid" or "same" (TensorFlow's
            rule for any stride and dilation). Default 0.
        groups: splits C and K into that many groups; groups == C is depthwise.
        activation: None, "relu", "tanh" or "sigmoid", applied in the kernel's epilogue.
        data_format: "NCHW" or "NHWC".
        algo: "auto" or one of :func:`algorithms` ("direct", "im2col", "reference"), or on a
            depthwise layer (groups == C) "depthwise" (CPU), on a 3x3, stride-1,
            dilation-1 layer "winograd" (CPU; this op and conv2d_backward_input only), or on
            an NHWC layer of 2, 4 or 8 channels a group "grouped" (CPU; this op,
            conv2d_backward_input at stride 1, conv2d_backward_weight for windows 1 or 3
            wide).
        device: None (follow the input) or "cpu".

    Returns:
        y: (N, K, OH, OW) for NCHW or (N, OH, OW, K) for NHWC, with x's dtype.

    Example:
        >>> import numpy as np, fastconv
        >>> x = np.ones((1, 1, 4, 4), np.float32); w = np.ones((2, 1, 3, 3), np.float32)
        >>> fastconv.ops.conv2d(x, w, padding="same")[0, 0]
        array([[4., 6., 6., 4.],
               [6., 9., 9., 6.],
               [6., 9., 9., 6.],
               [4., 6., 6., 4.]], dtype=float32)
    """
    device, (x, w, b) = _arrays(device, x=x, w=w, b=b)
    g = geometry.conv_geometry(x.shape, w.shape, stride, padding, dilation, groups, data_format)
    if b is not None:
        _expect("b", b, (g.K,), f"w {w.shape}")
    act = geometry.activation(activation)
    return _run("conv2d", device, _algo(algo, device), g, x.dtype, x, w, b, act)


def conv2d_backward_input(gy, w, x_shape, stride=1, padding=0, dilation=1, groups=1,
                          data_format="NCHW", algo="auto", device=None):
    """Gradient of :func:`conv2d` with respect to x, of shape ``x_shape``, given ``gy = dL/dy``."""
    device, (gy, w) = _arrays(device, gy=gy, w=w)
    x_shape = _shape4("x_shape", x_shape)
    g = geometry.conv_geometry(x_shape, w.shape, stride, padding, dilation, groups, data_format)
    _expect("gy", gy, g.y_shape, f"conv2d of x {x_shape} with w {w.shape}")
    return _run("conv2d_backward_input", device, _algo(algo, device), g, gy.dtype, gy, w)


def conv2d_backward_weight(gy, x, w_shape, stride=1, padding=0, dilation=1, groups=1,
                           data_format="NCHW", algo="auto", device=None):
    """Gradient of :func:`conv2d` with respect to w, of shape ``w_shape``, given ``gy``."""
    device, (gy, x) = _arrays(device, gy=gy, x=x)
    w_shape = _shape4("w_shape", w_shape)
    g = geometry.conv_geometry(x.shape, w_shape, stride, padding, dilation, groups, data_format)
    _expect("gy", gy, g.y_shape, f"conv2d of x {x.shape} with w {w_shape}")
    return _run("conv2d_backward_weight", device, _algo(algo, device), g, gy.dtype, gy, x)


def conv2d_backward_bias(gy, data_format="NCHW", device=None):
    """Gradient of :func:`conv2d` with respect to b: gy summed over all but the channel axis."""
    device, (gy,) = _arrays(device, gy=gy)
    data_format = geometry.layout(data_format)
    if gy.ndim != 4:
        raise ValueError(f"gy must be 4-D {data_format}, got shape {gy.shape}")
    return _call("conv2d_backward_bias", device, gy, gy, None, data_format)[1]


def _output_gradient(gy, y, activation, need_b, data_format, device):
    """(the gradient before a fused activation, the bias gradient or None) for the backward of
    a convolution: gy itself without an activation; with one, gy times the activation's slope
    at the forward's output y, in the kernel that sums the bias gradient."""
    activation = geometry.activation(activation)
    if activation is None:
        return gy, (conv2d_backward_bias(gy, data_format, device) if need_b else None)
    if y is None:
        raise ValueError(f"activation={activation!r} needs y, the forward's output, whose "
                         "slope its gradient is")
    device, (gy, y) = _arrays(device, gy=gy, y=y)
    _expect("y", y, gy.shape, f"gy {gy.shape}")
    gz, gb = _call("conv2d_backward_bias", device, gy, y, activation,
                   geometry.layout(data_format))
    return gz, (gb if need_b else None)


def conv2d_backward(gy, x, w, needs=(True, True, True), stride=1, padding=0, dilation=1,
                    groups=1, data_format="NCHW", algo="auto", device=None, activation=None,
                    y=None):
    """The gradients of :func:`conv2d` with respect to (x, w, b), computing only those that
    ``needs`` (three booleans) asks for and putting None in place of the others. With the
    forward's fused ``activation``, gy is the gradient of its output ``y`` (which must be
    given): the activation's gradient is taken in the same pass as the bias's."""
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                    data_format=data_format, device=device)
    need_x, need_w, need_b = needs
    gy, gb = _output_gradient(gy, y, activation, need_b, data_format, device)
    if need_x and need_w:
        both = _both_gradients(gy, x, w, algo, **geometry)
        if both is not None:
            return (*both, gb)
    return (
        conv2d_backward_input(gy, w, x.shape, algo=algo, **geometry) if need_x else None,
        conv2d_backward_weight(gy, x, w.shape, algo=algo, **geometry) if need_w else None,
        gb,
    )


def _both_gradients(gy, x, w, algo, stride, padding, dilation, groups, data_format, device):
    """(gx, gw) from one implementation of both ("conv2d_backward": one pass over gy where
    the layer allows it), or None where none serves the layer for ``algo``. A layer it does
    not serve is told from the shapes alone, the arrays left to the two ops it falls back to
    to check (checking them here as well cost LeNet-5's 0.23 ms C3 backward 9 us, now 5)."""
    paired = "im2col"
    if algo not in ("auto", paired):
        return None
    device = devices.resolve(device, gy=gy, x=x, w=w)
    g = geometry.conv_geometry(x.shape, w.shape, stride, padding, dilation, groups, data_format)
    if g.N == 0 or refusal("conv2d_backward", device, paired, g) is not None:
        return None
    device, (gy, x, w) = _arrays(device, gy=gy, x=x, w=w)
    _expect("gy", gy, g.y_shape, f"conv2d of x {x.shape} with w {w.shape}")
    return _run("conv2d_backward", device, paired, g, gy.dtype, gy, x, w)


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     activation=None, data_format="NCHW", algo="auto", device=None):
    """The transposed convolution, PyTorch's ``conv_transpose2d`` (the gradient of
    :func:`conv2d` with respect to its input, as a layer), with bias and activation.

    Args:
        x: (N, C_in, H, W) for NCHW or (N, H, W, C_in) for NHWC.
        w: (C_in, C_out/groups, R, S) for NCHW (PyTorch's) or (R, S, C_out/groups, C_in) for
            NHWC (TensorFlow's conv2d_transpose filters).
        stride, dilation, output_padding: an int or a pair; output_padding adds rows and
            columns after the last, smaller than the stride or the dilation.
        padding: an int, a pair or ((top, bottom), (left, right)), taken off the output.
        groups, activation, data_format, algo, device: as :func:`conv2d` (``algo`` picks the
            conv2d_backward_input algorithm that computes it).

    Returns:
        y: (N, C_out, OH, OW) (NHWC: (N, OH, OW, C_out)), OH = (H - 1) * stride - pad_top -
        pad_bottom + dilation * (R - 1) + output_padding + 1.
    """
    device, (x, w, b) = _arrays(device, x=x, w=w, b=b)
    t = geometry.conv_transpose_geometry(x.shape, w.shape, stride, padding, output_padding,
                                         dilation, groups, data_format)
    c_out = t.y_shape[1 if t.conv.layout == "NCHW" else 3]
    if b is not None:
        _expect("b", b, (c_out,), f"w {w.shape}")
    act = geometry.activation(activation)
    xp = devices.array_module(device)
    y = _run("conv2d_backward_input", device, _algo(algo, device), t.conv, x.dtype, x, w)
    if any(t.extra):  # output_padding past what any input reaches: zeros before the bias
        core, y = y, xp.zeros(t.y_shape, x.dtype)
        nchw = geometry.nchw_view(y, t.conv.layout)
        nchw[:, :, : t.conv.H, : t.conv.W] = geometry.nchw_view(core, t.conv.layout)
    y = xp.ascontiguousarray(y)  # the reference's is a view
    if (b is None and act is None) or y.size == 0:
        return y
    return _call("bias_activation", device, y, b, act, t.conv.layout)


def _core(gy, t, device):
    """The part of a transposed convolution's output gradient its input reaches."""
    if not any(t.extra):
        return gy
    view = geometry.nchw_view(gy, t.conv.layout)[:, :, : t.conv.H, : t.conv.W]
    return devices.array_module(device).ascontiguousarray(
        view if t.conv.layout == "NCHW" else view.transpose(0, 2, 3, 1))


def _transposed_gradient(gy, other, name, shape, stride, padding, output_padding, dilation,
                         groups, data_format, device):
    """(gy's core, the other array, the keyword arguments of the convolution it transposes)
    of a transposed convolution's gradient call, gy checked against its output."""
    device, (gy, other) = _arrays(device, gy=gy, **{name: other})
    x_shape, w_shape = (shape, other.shape) if name == "w" else (other.shape, shape)
    t = geometry.conv_transpose_geometry(x_shape, w_shape, stride, padding, output_padding,
                                         dilation, groups, data_format)
    _expect("gy", gy, t.y_shape, f"conv_transpose2d of x {x_shape} with w {w_shape}")
    conv = t.conv
    return _core(gy, t, device), other, dict(
        stride=conv.stride, dilation=conv.dilation, groups=conv.groups,
        padding=((conv.padding[0], conv.padding[1]), (conv.padding[2], conv.padding[3])),
        data_format=conv.layout, device=device)


def conv_transpose2d_backward_input(gy, w, x_shape, stride=1, padding=0, output_padding=0,
                                    groups=1, dilation=1, data_format="NCHW", algo="auto",
                                    device=None):
    """Gradient of :func:`conv_transpose2d` with respect to x: the convolution of gy with w."""
    x_shape = _shape4("x_shape", x_shape)
    core, w, conv = _transposed_gradient(gy, w, "w", x_shape, stride, padding, output_padding,
                                         dilation, groups, data_format, device)
    return conv2d(core, w, algo=algo, **conv)


def conv_transpose2d_backward_weight(gy, x, w_shape, stride=1, padding=0, output_padding=0,
                                     groups=1, dilation=1, data_format="NCHW", algo="auto",
                                     device=None):
    """Gradient of :func:`conv_transpose2d` with respect to w: conv2d's weight gradient with
    the roles swapped (gy the convolution's input, x its output's gradient)."""
    w_shape = _shape4("w_shape", w_shape)
    core, x, conv = _transposed_gradient(gy, x, "x", w_shape, stride, padding, output_padding,
                                         dilation, groups, data_format, device)
    return conv2d_backward_weight(x, core, w_shape, algo=algo, **conv)


def conv_transpose2d_backward(gy, x, w, needs=(True, True, True), stride=1, padding=0,
                              output_padding=0, groups=1, dilation=1, data_format="NCHW",
                              algo="auto", device=None, activation=None, y=None):
    """The gradients of :func:`conv_transpose2d` with respect to (x, w, b), those ``needs``
    asks for, None for the others; ``activation`` and ``y`` as :func:`conv2d_backward`'s."""
    arguments = dict(stride=stride, padding=padding, output_padding=output_padding,
                     groups=groups, dilation=dilation, data_format=data_format, device=device)
    need_x, need_w, need_b = needs
    gy, gb = _output_gradient(gy, y, activation, need_b, data_format, device)
    return (
        conv_transpose2d_backward_input(gy, w, x.shape, algo=algo, **arguments)
        if need_x else None,
        conv_transpose2d_backward_weight(gy, x, w.shape, algo=algo, **arguments)
        if need_w else None,
        gb,
    )


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               data_format="NCHW", device=None, return_indices=False):
    """2-D max pooling, PyTorch's semantics; padding may also be "same" or "valid" (TensorFlow's).

    Padded cells never win. ``stride`` defaults to ``kernel_size``; a window takes every
    ``dilation``-th cell; with ``ceil_mode`` a last, partial window is kept when it starts
    inside the input or its leading padding. ``padding`` is an int or a pair, at most half the
    window (PyTorch's rule), or TensorFlow's explicit ``((top, bottom), (left, right))``, each
    side smaller than the window. With ``return_indices`` also returns PyTorch's indices: where
    each maximum is, ``h * W + w`` within its plane, int64, in y's shape and layout;
    :func:`max_pool2d_backward` takes them.
    """
    device, (x,) = _arrays(device, x=x)
    p = geometry.pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode, True,
                               data_format, dilation)
    return _run("max_pool2d", device, "auto", p, x.dtype, x, bool(return_indices))


def _indices(indices, device, p):
    """The saved indices of a max pooling, checked: an integer array on ``device`` in y's shape
    whose values index a plane (0 <= i < H*W), as a contiguous int64 array (a copy where it
    was not one: the caller's is never modified)."""
    devices.resolve(device, indices=indices)
    indices = devices.to_device(indices, device)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got {indices.dtype}")
    _expect("indices", indices, p.y_shape, "max_pool2d's output")
    indices = devices.array_module(device).ascontiguousarray(indices, dtype=np.int64)
    if indices.size and not (0 <= int(indices.min()) and int(indices.max()) < p.H * p.W):
        raise ValueError(f"indices must lie in [0, H*W = {p.H * p.W}) for planes of "
                         f"{p.H}x{p.W}, got values in [{int(indices.min())}, "
                         f"{int(indices.max())}]")
    return indices


def _pool_gradient(op, device, gy, x_shape, *window):
    """(device, gy, geometry) of a pooling's gradient call: gy checked against the output of
    ``op`` on an input of shape ``x_shape``; ``window`` is pool_geometry's arguments after the
    shape."""
    device, (gy,) = _arrays(device, gy=gy)
    p = geometry.pool_geometry(x_shape, *window)
    _expect("gy", gy, p.y_shape, f"{op} of x {x_shape}")
    return device, gy, p


def max_pool2d_backward(gy, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        data_format="NCHW", device=None, indices=None):
    """Gradient of :func:`max_pool2d`: each gy goes to its window's first maximum in scan order,
    summed where windows overlap. Given the forward's ``indices`` it goes there, nothing
    recomputed, and ``x`` is only needed for its shape (an array, or the shape itself)."""
    window = (kernel_size, stride, padding, ceil_mode, True, data_format, dilation)
    if indices is not None and _is_shape(x):
        device, gy, p = _pool_gradient("max_pool2d", device, gy, _shape4("x", x), *window)
    else:
        device, (gy, x) = _arrays(device, gy=gy, x=x)
        device, gy, p = _pool_gradient("max_pool2d", device, gy, x.shape, *window)
    if indices is not None:
        return _run("max_pool2d_backward_indices", device, "auto", p, gy.dtype, gy,
                    _indices(indices, device, p))
    return _run("max_pool2d_backward", device, "auto", p, gy.dtype, gy, x)


def _is_shape(value):
    return isinstance(value, (tuple, list))


def max_pool2d_backward_saved(gy, indices, x_shape, kernel_size, stride=None, padding=0,
                              dilation=1, ceil_mode=False, data_format="NCHW", device=None):
    """:func:`max_pool2d_backward` through indices that :func:`max_pool2d` itself returned (the
    autograd's path): trusted, so their range is not checked again, which would cost a pass over
    them and, on a GPU, a host synchronisation per call."""
    device, gy, p = _pool_gradient("max_pool2d", device, gy, _shape4("x_shape", x_shape),
                                   kernel_size, stride, padding, ceil_mode, True, data_format,
                                   dilation)
    _expect("indices", indices, p.y_shape, "max_pool2d's output")
    return _run("max_pool2d_backward_indices", device, "auto", p, gy.dtype, gy, indices)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, data_format="NCHW", device=None):
    """2-D average pooling, PyTorch's semantics; "same"/"valid" padding divides by real cells.

    With numeric padding (as :func:`max_pool2d` takes it), ``count_include_pad`` divides by the
    window clipped to the padded input (True, PyTorch's default) or by the number of real cells
    (False). With "same" or "valid" padding TensorFlow's rule applies: padded cells are never
    counted. A ``divisor_override`` (a non-zero int) is the divisor of every window instead.
    """
    device, (x,) = _arrays(device, x=x)
    p = geometry.pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode,
                               count_include_pad, data_format, 1, divisor_override)
    return _run("avg_pool2d", device, "auto", p, x.dtype, x)


def avg_pool2d_backward(gy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None, data_format="NCHW",
                        device=None):
    """Gradient of :func:`avg_pool2d` with respect to its input of shape ``x_shape``."""
    device, gy, p = _pool_gradient("avg_pool2d", device, gy, _shape4("x_shape", x_shape),
                                   kernel_size, stride, padding, ceil_mode, count_include_pad,
                                   data_format, 1, divisor_override)
    return _run("avg_pool2d_backward", device, "auto", p, gy.dtype, gy)


def adaptive_avg_pool2d(x, output_size, data_format="NCHW", device=None):
    """Adaptive average pooling to ``output_size`` (an int, or a pair whose None keeps that
    axis), PyTorch's windows: along an axis of size H, output o averages rows
    floor(o * H / OH) up to ceil((o + 1) * H / OH). ``output_size=1`` is global average
    pooling."""
    device, (x,) = _arrays(device, x=x)
    p = geometry.adaptive_pool_geometry(x.shape, output_size, data_format)
    return _run("adaptive_avg_pool2d", device, "auto", p, x.dtype, x)


def adaptive_avg_pool2d_backward(gy, x_shape, data_format="NCHW", device=None):
    """Gradient of :func:`adaptive_avg_pool2d` with respect to its input of shape ``x_shape``;
    the output size is gy's."""
    device, (gy,) = _arrays(device, gy=gy)
    layout = geometry.layout(data_format)
    if gy.ndim != 4:
        raise ValueError(f"gy must be 4-D {layout}, got shape {gy.shape}")
    out = gy.shape[2:] if layout == "NCHW" else gy.shape[1:3]
    p = geometry.adaptive_pool_geometry(_shape4("x_shape", x_shape), tuple(out), layout)
    _expect("gy", gy, p.y_shape, f"adaptive_avg_pool2d of x {p.x_shape}")
    return _run("adaptive_avg_pool2d_backward", device, "auto", p, gy.dtype, gy)


def _channels(x, data_format):
    """(layout, C) of a 4-D activation."""
    data_format = geometry.layout(data_format)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D {data_format}, got shape {x.shape}")
    return data_format, x.shape[1 if data_format == "NCHW" else 3]


def _writeable(a):
    # CuPy's flags have no writeable field: a CuPy array is always writeable
    return getattr(a.flags, "writeable", True)


def _in_place(**arrays):
    for name, a in arrays.items():
        flags = getattr(a, "flags", None)
        if a is not None and (flags is None or not flags.c_contiguous or not _writeable(a)):
            raise ValueError(f"{name} must be a writeable C-contiguous array: it is updated "
                             "in place")


def batch_norm2d(x, weight=None, bias=None, running_mean=None, running_var=None, training=False,
                 momentum=0.1, eps=1e-5, activation=None, data_format="NCHW", device=None,
                 residual=None):
    """Batch normalisation of each channel, PyTorch's ``torch.nn.functional.batch_norm``:
    ``(x - mean) / sqrt(var + eps) * weight + bias``, then ``activation`` (None, "relu",
    "tanh" or "sigmoid") in the same pass, as conv2d fuses it; ``residual`` (x's shape), when
    given, is added before the activation: a residual block's ``relu(bn(conv(x)) + shortcut)``
    in one pass.

    In training, mean and var are the batch's, over N, H and W (the variance biased), and the
    running buffers, when given, move ``momentum`` of the way to them (the variance unbiased),
    updated in place: the one documented exception, with :func:`adam_step`, to "inputs are
    never modified", so they must be writeable C-contiguous arrays. In evaluation
    (``training=False``) the running statistics normalise and are needed. ``weight`` and
    ``bias`` (C,) are optional (affine=False). Statistics are summed in float64.

    Returns:
        (y, mean, invstd): y in x's shape, layout and dtype, and the (C,) statistics used,
        ``invstd = 1 / sqrt(var + eps)``, which :func:`batch_norm2d_backward` takes. For an
        empty x nothing is measured: y is empty, mean and invstd are NaN and the running
        buffers stay as they are.
    """
    if training:
        _in_place(running_mean=running_mean, running_var=running_var)
    elif running_mean is None or running_var is None:
        raise ValueError("batch_norm2d in evaluation (training=False) normalises with "
                         "running_mean and running_var: both are needed")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var go together: pass both or neither")
    device, (x, weight, bias, running_mean, running_var, residual) = _arrays(
        device, x=x, weight=weight, bias=bias, running_mean=running_mean,
        running_var=running_var, residual=residual)
    layout, c = _channels(x, data_format)
    if residual is not None:
        _expect("residual", residual, x.shape, f"batch_norm2d of x {x.shape}")
    for name, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if a is not None:
            _expect(name, a, (c,), f"x {x.shape} ({layout}) with {c} channels")
    momentum, eps = _real("momentum", momentum, 0, 1), _real("eps", eps, 0, math.inf)
    act = geometry.activation(activation)
    count = x.size // max(c, 1)
    if training and count == 1:
        raise ValueError(f"batch_norm2d in training needs more than 1 value per channel, got "
                         f"x {x.shape}")
    if x.size == 0:
        xp = devices.array_module(device)
        nothing = xp.full(c, xp.nan, x.dtype)
        return xp.empty(x.shape, x.dtype), nothing, nothing.copy()
    return _call("batch_norm2d", device, layout, x, weight, bias, running_mean, running_var,
                 bool(training), training and running_mean is not None, momentum, eps, act,
                 residual)


def batch_norm2d_backward(gy, x, weight, save_mean, save_invstd, training=True, y=None,
                          activation=None, data_format="NCHW", device=None, residual=False):
    """The gradients (gx, gweight, gbias) of :func:`batch_norm2d` given ``gy = dL/dy``, from
    the ``mean`` and ``invstd`` it returned. ``training`` must be the forward's: in training
    the statistics depend on x, and gx carries their terms. With the forward's ``activation``
    its output ``y`` is needed too (the activation's slope is read from it). ``weight`` None is
    affine=False (gweight and gbias are still returned). With ``residual=True`` (the forward
    added one) the residual's gradient comes fourth, from the same pass: gy times the
    activation's slope (gy itself without an activation). An empty x gives an empty gx and
    zeros."""
    act = geometry.activation(activation)
    if act is not None and y is None:
        raise ValueError(f"batch_norm2d_backward with activation={activation!r} needs the "
                         "forward's output y")
    device, (gy, x, weight, save_mean, save_invstd, y) = _arrays(
        device, gy=gy, x=x, weight=weight, save_mean=save_mean, save_invstd=save_invstd,
        y=y if act is not None else None)
    layout, c = _channels(x, data_format)
    _expect("gy", gy, x.shape, f"batch_norm2d of x {x.shape}")
    if y is not None:
        _expect("y", y, x.shape, f"batch_norm2d of x {x.shape}")
    if save_mean is None or save_invstd is None:
        raise ValueError("save_mean and save_invstd are needed: pass the mean and invstd "
                         "batch_norm2d returned")
    for name, a in (("weight", weight), ("save_mean", save_mean), ("save_invstd", save_invstd)):
        if a is not None:
            _expect(name, a, (c,), f"x {x.shape} ({layout}) with {c} channels")
    if x.size == 0:
        xp = devices.array_module(device)
        gradients = xp.empty(x.shape, x.dtype), xp.zeros(c, x.dtype), xp.zeros(c, x.dtype)
        return (*gradients, xp.empty(x.shape, x.dtype)) if residual else gradients
    return _call("batch_norm2d_backward", device, layout, gy, x, weight, save_mean,
                 save_invstd, bool(training), y, act, bool(residual))


def _dropout_scale(p, dtype):
    """What a kept element is multiplied by, 1 / (1 - p) in ``dtype`` (0 for p = 1: nothing
    is kept)."""
    p = _real("p", p, 0, 1)
    return p, dtype.type(0 if p == 1 else 1 / (1 - p))


def dropout(x, p=0.5, seed=None, device=None):
    """Inverted dropout in training: each element kept with probability 1 - p and scaled by
    1 / (1 - p), the others zeroed (p = 1 zeroes all).

    The mask is a pure function of ``seed`` (a non-negative int) and the element's position in
    x's C order, the same on the CPU and the GPU (kernels/dropout.py); ``seed=None`` draws it
    from fastconv's generator, which ``fastconv.manual_seed`` seeds.

    Returns:
        (y, mask): y in x's shape and dtype, ``y == x * mask * (1 / (1 - p))``, and the boolean
        mask, which :func:`dropout_backward` takes.
    """
    device, (x,) = _arrays(device, x=x)
    p, scale = _dropout_scale(p, x.dtype)
    if seed is None:
        seed = rng.seed()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
            0 <= seed < 2**63):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    threshold = min(round(p * 2**32), 2**32)
    if x.size == 0:
        xp = devices.array_module(device)
        return xp.empty(x.shape, x.dtype), xp.empty(x.shape, np.bool_)
    return _call("dropout", device, x, int(seed), threshold, scale)


def dropout_backward(gy, mask, p=0.5, device=None):
    """Gradient of :func:`dropout`: ``gy * mask * (1 / (1 - p))`` for the forward's mask."""
    device, (gy,) = _arrays(device, gy=gy)
    devices.resolve(device, mask=mask)
    mask = devices.to_device(mask, device)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array (dropout's), got {mask.dtype}")
    _expect("mask", mask, gy.shape, f"dropout's gradient gy {gy.shape}")
    _, scale = _dropout_scale(p, gy.dtype)
    mask = devices.array_module(device).ascontiguousarray(mask)
    if gy.size == 0:
        return devices.array_module(device).empty(gy.shape, gy.dtype)
    return _call("dropout_backward", device, gy, mask, scale)


def softmax_cross_entropy(logits, target, device=None):
    """Softmax cross-entropy of class indices and its gradient, in one kernel: PyTorch's
    ``cross_entropy(logits, target)`` (the mean over the batch) with ``d loss / d logits``
    from the same pass, as TensorFlow's raw SparseSoftmaxCrossEntropyWithLogits returns
    (loss, backprop), but with PyTorch's mean where TensorFlow keeps a loss per example.

    Args:
        logits: (N, C) unnormalised scores, float32 or float64.
        target: (N,) class indices in [0, C), of any integer dtype (int64 is used as it is,
            others are converted). On the logits' device, or on the host for logits on a GPU
            (a data loader's labels): checked there, with no wait for the GPU, then copied. A
            target on a GPU is checked on it, which waits for the work queued before.
        device: None (follow the arrays), "cpu" or "cuda".

    Returns:
        (loss, grad): loss, a 0-d array of the logits' dtype, the mean over n of
        ``logsumexp(logits[n]) - logits[n, target[n]]``; grad (N, C), its gradient
        ``(softmax(logits) - onehot(target)) / N`` (times an upstream gradient, the chain
        rule's). The log-sum-exp is shifted by each row's max, so large logits do not
        overflow, and the sums (a row's exponentials, the batch's losses) are taken in
        float64. Non-finite logits give PyTorch's results: a NaN or a +inf in a row, or a row
        all -inf, makes that row's gradient and the loss NaN; a -inf elsewhere is a class of
        probability 0 (gradient 0; at the target, -1/N and a loss of +inf). Where float32
        row losses are finite but their sum is not (logits ~1e38 apart), PyTorch's mean is
        +inf and this one finite. N = 0 gives a NaN loss (PyTorch's mean over nothing) and
        an empty grad, and runs no kernel.

    Example:
        >>> import numpy as np, fastconv
        >>> logits = np.zeros((2, 4), np.float32)
        >>> loss, grad = fastconv.ops.softmax_cross_entropy(logits, np.array([0, 3]))
        >>> round(float(loss), 4), loss.dtype  # log(4)
        (1.3863, dtype('float32'))
        >>> grad
        array([[-0.375,  0.125,  0.125,  0.125],
               [ 0.125,  0.125,  0.125, -0.375]], dtype=float32)
    """
    device, (logits,) = _arrays(device, logits=logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {logits.shape}")
    n, c = logits.shape
    if devices.where(target) != "cpu" or device == "cpu":  # else host labels for a GPU
        devices.resolve(device, target=target)
        target = devices.to_device(target, device)
    if target.dtype.kind not in "iu" or target.shape != (n,):
        raise ValueError(f"target must be (N,) integer class indices for logits {logits.shape}, "
                         f"got {target.dtype} {target.shape}")
    if n and not (0 <= int(target.min()) and int(target.max()) < c):
        raise ValueError(f"target classes must lie in [0, {c}) for logits {logits.shape}, got "
                         f"values in [{int(target.min())}, {int(target.max())}]")
    xp = devices.array_module(device)
    if n == 0:
        return xp.full((), xp.nan, logits.dtype), xp.empty(logits.shape, logits.dtype)
    target = devices.array_module(devices.where(target)).ascontiguousarray(target, np.int64)
    return _call("softmax_cross_entropy", device, logits, devices.to_device(target, device))


def _real(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
    return float(value)


def adam_step(param, grad, m, v, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
              weight_decay=0.0, device=None):
    """Step ``step`` (1 for the first) of torch.optim.Adam on ``param``, in one kernel.

    ``param``, ``grad``, ``m`` and ``v`` are arrays, or lists (or tuples) of as many arrays,
    the i-th of each one tensor's, all at step ``step``, as torch.optim's functional
    ``adam(params, grads, exp_avgs, exp_avg_sqs, ...)`` takes them: one kernel updates them
    all (a GPU launch per 16 tensors; float32 and float64 tensors go in separate launches).

    Updates ``param`` and its moment estimates ``m`` and ``v`` in place, so those three must be
    C-contiguous NumPy or CuPy arrays (a copy would lose the update); ``grad`` is only read.
    The arithmetic is in the arrays' dtype, as PyTorch's, with its bias corrections.
    """
    device, tensors = _step_tensors(device, param, grad, m=m, v=v)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    b1, b2 = betas
    scalars = (b1, 1 - b1, b2, 1 - b2, eps, weight_decay, lr / (1 - b1 ** step),
               math.sqrt(1 - b2 ** step))
    for dtype, (params, grads, ms, vs) in tensors.items():
        _call("adam_step", device, params, grads, ms, vs, tuple(dtype.type(s) for s in scalars))


def sgd_step(param, grad, momentum_buffer=None, lr=1e-3, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, first_step=False, device=None):
    """One step of torch.optim.SGD on ``param``, in one kernel:

    ``d = grad + weight_decay * param``; with momentum, the buffer
    ``b = momentum * b + (1 - dampening) * d``, or ``b = d`` on its first step
    (``first_step=True``: the buffer holds nothing yet and is only written), then
    ``d = d + momentum * b`` (``nesterov``) or ``d = b``; and ``param -= lr * d``.

    ``param``, ``grad`` and ``momentum_buffer`` are arrays, or lists (or tuples) of as many
    arrays, the i-th of each one tensor's, as torch.optim's functional
    ``sgd(params, d_p_list, momentum_buffer_list, ...)`` takes them (all of them at their first
    step, or none): one kernel updates them all (a GPU launch per 16 tensors; float32 and
    float64 tensors go in separate launches). ``momentum_buffer`` is needed with momentum and
    refused without; Nesterov needs a momentum and zero dampening, as torch.optim.SGD does;
    lr, momentum and weight_decay are >= 0, dampening in [0, 1].

    Updates ``param`` and ``momentum_buffer`` in place, so they must be C-contiguous NumPy or
    CuPy arrays (a copy would lose the update); ``grad`` is only read. The arithmetic is in the
    arrays' dtype, as PyTorch's.
    """
    # lr may be 0, as torch.optim allows it: where a cosine schedule ends
    lr, momentum, weight_decay = (_real(name, value, 0, math.inf) for name, value in (
        ("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)))
    dampening = _real("dampening", dampening, 0, 1)
    for name, flag in (("nesterov", nesterov), ("first_step", first_step)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if nesterov and (momentum == 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if momentum and momentum_buffer is None:
        raise ValueError(f"momentum={momentum} needs a momentum_buffer")
    if not momentum and momentum_buffer is not None:
        raise ValueError("momentum_buffer is for momentum, which is 0")
    buffers = {} if momentum_buffer is None else dict(momentum_buffer=momentum_buffer)
    device, tensors = _step_tensors(device, param, grad, **buffers)
    for dtype, (params, grads, *state) in tensors.items():
        scalars = tuple(dtype.type(s) for s in (lr, momentum, 1 - dampening, weight_decay))
        _call("sgd_step", device, params, grads, state[0] if state else None,
              (*scalars, bool(nesterov), bool(first_step)))


def _step_tensors(device, param, grad, **state):
    """An optimiser step's device and, per dtype, the lists (params, grads, *state) of its
    tensors of that dtype: ``param`` and the ``state`` arrays (:func:`adam_step`'s m and v)
    updated in place, ``grad`` only read; each tensor's arrays checked as a single array's
    are, named by their index in a list ("m[2] has shape ...")."""
    names, given = ("param", "grad", *state), (param, grad, *state.values())
    if not isinstance(param, (list, tuple)):
        tensors = [dict(zip(names, given, strict=True))]
    else:
        for name, a in zip(names[1:], given[1:], strict=True):
            if not isinstance(a, (list, tuple)) or len(a) != len(param):
                got = type(a).__name__ + (f" of {len(a)}" if isinstance(a, (list, tuple)) else "")
                raise ValueError(f"{name} must be a list of {len(param)} arrays, as param is, "
                                 f"got a {got}")
        plain = _plain_step_tensors(device, list(zip(*given, strict=True)))
        if plain is not None:
            return plain
        tensors = [{f"{name}[{i}]": a for name, a in zip(names, arrays, strict=True)}
                   for i, arrays in enumerate(zip(*given, strict=True))]
    every = {name: a for arrays in tensors for name, a in arrays.items()}
    missing = [name for name, a in every.items() if a is None]
    if missing:
        raise TypeError(f"{missing[0]} must be an array, got None")
    device, groups = devices.resolve(device, **every), {}
    for named in tensors:
        param_name, grad_name, *state_names = named
        _in_place(**{name: named[name] for name in (param_name, *state_names)})
        _, arrays = _arrays(device, **named)
        for name, a in zip((grad_name, *state_names), arrays[1:], strict=True):
            _expect(name, a, arrays[0].shape, f"an update of {param_name}")
        for members, a in zip(groups.setdefault(arrays[0].dtype, tuple([] for _ in names)),
                              arrays, strict=True):
            members.append(a)
    return device, groups


def _plain_step_tensors(device, tensors):
    """:func:`_step_tensors`'s answer for the lists of a model's step, without its checks
    array by array, when they would pass every array as it is (a third of their time): each
    tensor's arrays (param, grad, *state) of the kind ``device`` takes (the first param's
    place for None), of one float dtype and shape, C-contiguous, writeable but for the grad.
    None otherwise: the checks then name what is wrong."""
    if not tensors:
        return None
    device = devices.parse(device if device is not None else devices.where(tensors[0][0]))
    kind, groups = devices.array_module(device).ndarray, {}
    for arrays in tensors:
        p, _, *state = arrays
        dtype, shape = getattr(p, "dtype", None), getattr(p, "shape", None)
        if dtype not in FLOATS or not all(
                isinstance(a, kind) and a.dtype == dtype and a.shape == shape
                and a.flags.c_contiguous for a in arrays) or not all(
                _writeable(a) for a in (p, *state)):
            return None
        for members, a in zip(groups.setdefault(dtype, tuple([] for _ in arrays)), arrays,
                              strict=True):
            members.append(a)
    return device, groups


def matmul(a, b, device=None):
    """The matrix product ``a @ b`` of 2-D arrays, the autograd's linear layers' product.

    On the CPU it runs on fastconv's threads, each block of the output one single-threaded BLAS
    call (kernels/gemm.py): the BLAS keeps no threads of its own to wake and spin beside
    fastconv's. On a GPU it is cuBLAS's (CuPy's matmul). Operands are read with their strides
    (a transposed view is not copied); a new C-contiguous array of their dtype is returned.

    Args:
        a: (M, K), float32 or float64.
        b: (K, N), of a's dtype.
        device: None (follow the arrays), "cpu" or "cuda".
    """
    device, (a, b) = _arrays(device, contiguous=False, a=a, b=b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul takes a (M, K) and b (K, N), got shapes a {a.shape} and "
                         f"b {b.shape}")
    return _call("matmul", device, a, b)
