"""tf.nn's conv2d, conv2d_transpose, max_pool2d and avg_pool2d on fastconv's kernels, without
TensorFlow.

The signatures and conventions are TensorFlow 2's ``tf.nn`` (``tensorflow/python/ops/nn_ops.py``):

- ``input`` is 4-D, (N, H, W, C) for ``data_format="NHWC"`` (the default) or (N, C, H, W) for
  ``"NCHW"``. ``filters`` are HWIO, (R, S, C/groups, K), whatever the data_format.
- ``strides``, ``ksize`` and ``dilations`` are an int, a list of 1 or 2 ints (height, width), or
  a list of 4 ints in data_format order with 1 on the batch and channel axes.
- ``padding`` is ``"SAME"`` or ``"VALID"``, uppercase only: TensorFlow's op attributes are the
  enums ``padding: {'SAME', 'VALID', 'EXPLICIT'}`` and ``data_format: {'NHWC', 'NCHW'}``
  (tensorflow/core/util/padding.cc), so ``"same"`` and ``"nhwc"`` raise here too. SAME gives
  ``out = ceil(in / stride)`` and splits the padding with the odd pixel after; VALID gives
  ``ceil((in - (k - 1) * d) / stride)`` (see :mod:`fastconv.geometry`). conv2d and max_pool2d
  also take explicit padding, 4 pairs in data_format order with [0, 0] on the batch and channel
  axes, ``[[0, 0], [top, bottom], [left, right], [0, 0]]`` for NHWC; avg_pool2d takes only the
  words, as tf.nn.avg_pool2d does.
- Pooling never counts padded cells: max ignores them, average divides by the real cells.
- An input with an empty spatial or channel axis gives TensorFlow's output shape without a
  kernel run: empty, or zeros where only the channels are empty (a convolution's output then
  is its bias-free sum over no channels); a VALID window larger than an empty axis is
  TensorFlow's "Computed output size would be negative" error.

Arrays go to :mod:`fastconv.ops` as they are (only NCHW convolution transposes a view of the
filters to OIHW) and come back as ops returns them, with the input's dtype. Bad arguments raise
ValueError or TypeError naming the argument and the values. Where fastconv is narrower than
TensorFlow it says so: input is 4-D (tf.nn.conv2d also takes extra leading batch axes).
Explicit max-pool padding follows TensorFlow's rule (PoolParameters in
tensorflow/core/kernels/pooling_ops_common.cc): each side, top, bottom, left and right, is
smaller than the window along its axis.
"""

from __future__ import annotations

from . import device as devices
from . import geometry, ops

LAYOUTS = ("NHWC", "NCHW")
WORDS = ("SAME", "VALID")
_SPATIAL = {"NHWC": (1, 2), "NCHW": (2, 3)}  # positions of H and W in a 4-list
_EXPLICIT = {"NHWC": "[[0, 0], [top, bottom], [left, right], [0, 0]]",
             "NCHW": "[[0, 0], [0, 0], [top, bottom], [left, right]]"}


def _layout(data_format):
    """TensorFlow's data_format: None means NHWC; the names are case-sensitive enums."""
    data_format = "NHWC" if data_format is None else data_format
    if data_format not in LAYOUTS:
        raise ValueError(f"data_format must be 'NHWC' or 'NCHW' (uppercase, as in TensorFlow), "
                         f"got {data_format!r}")
    return data_format


def _rank4(name, array, layout):
    """The shape of a 4-D array argument."""
    shape = getattr(array, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be an array, got {type(array).__name__}")
    if len(shape) != 4:
        raise ValueError(f"{name} must be 4-D {layout}, got shape {tuple(shape)}")
    return shape


def _height_width(values, name, data_format, neutral):
    """The (H, W) entries of a 4-list in data_format order whose N and C entries are neutral."""
    h, w = _SPATIAL[data_format]
    if any(v != neutral for i, v in enumerate(values) if i not in (h, w)):
        raise ValueError(f"{name} must be {neutral} on the batch and channel axes of "
                         f"{data_format}, got {values!r}")
    return values[h], values[w]


def _window(value, name, data_format):
    """strides, ksize or dilations as an (h, w) pair of positive ints.

    An int or a list of 1 or 2 ints applies to H and W; a list of 4 follows data_format
    (nn_ops.py, ``_get_sequence``)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 4:
        values = list(_height_width(values, name, data_format, 1))
    elif len(values) not in (1, 2):
        raise ValueError(f"{name} must be an int or a list of 1, 2 or 4 ints, got {value!r} "
                         f"of length {len(values)}")
    return geometry.pair(values[0] if len(values) == 1 else tuple(values), name, 1)


def _padding(padding, data_format, explicit=True):
    """The padding as ops takes it: a word as given, explicit pairs as ((top, bottom), (left,
    right)). Explicit padding is 4 pairs in data_format order (nn_ops.py, ``convert_padding``)."""
    if isinstance(padding, str) and padding in WORDS:
        return padding
    if explicit and isinstance(padding, (list, tuple)) and len(padding) == 4 and all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in padding):
        return _height_width([list(p) for p in padding], "padding", data_format, [0, 0])
    allowed = "'SAME' or 'VALID' (uppercase, as in TensorFlow)"
    if explicit:
        allowed += f" or 4 pairs {_EXPLICIT[data_format]}"
    raise ValueError(f"padding must be {allowed}, got {padding!r}")


def _windowed_size(size, k, stride, dilation, padding):
    """TensorFlow's output length along an axis of ``size`` (GetWindowedOutputSizeVerbose in
    tensorflow/core/framework/kernel_shape_util.cc): for "VALID", "SAME" or (before, after)."""
    extent = (k - 1) * dilation + 1
    if padding == "SAME":
        return (size + stride - 1) // stride
    before, after = (0, 0) if padding == "VALID" else padding
    out = (size + before + after - extent + stride) // stride
    if out < 0:
        raise ValueError(f"Computed output size would be negative: {out} [input_size: {size}, "
                         f"effective_filter_size: {extent}, stride: {stride}]")
    return out


def _without_cells(input, data_format, channels_out, kernel, stride, dilation, padding):
    """The result of a tf.nn op whose input has an empty spatial or channel axis: zeros of
    TensorFlow's output shape (empty unless only the channels are)."""
    h, w = (input.shape[i] for i in _SPATIAL[data_format])
    pads = (padding, padding) if isinstance(padding, str) else padding
    oh, ow = (_windowed_size(size, k, s, d, p) for size, k, s, d, p in
              zip((h, w), kernel, stride, dilation, pads, strict=True))
    shape = ((input.shape[0], oh, ow, channels_out) if data_format == "NHWC"
             else (input.shape[0], channels_out, oh, ow))
    return devices.array_module(devices.where(input) or "cpu").zeros(shape, input.dtype)


def _empty_cells(input, data_format):
    """Whether a spatial or the channel axis of ``input`` is empty."""
    return min(input.shape[1:]) == 0


def _pool(input, ksize, strides, data_format):
    """The data_format and ops' window arguments of a tf.nn pooling."""
    data_format = _layout(data_format)
    _rank4("input", input, data_format)
    return data_format, dict(kernel_size=_window(ksize, "ksize", data_format),
                             stride=_window(strides, "strides", data_format),
                             data_format=data_format)


def conv2d(input, filters, strides, padding, data_format="NHWC", dilations=None, name=None):
    """tf.nn.conv2d: 2-D cross-correlation of NHWC (or NCHW) input with HWIO filters.

    Args:
        input: (N, H, W, C) for NHWC or (N, C, H, W) for NCHW; float32 or float64.
        filters: (R, S, C/groups, K), HWIO whatever the data_format, input's dtype. C must be a
            multiple of the filters' in_channels; groups = C / in_channels (TensorFlow's
            implicit grouped convolution: Conv2D's shape function asks only that divisibility).
        strides: an int or 1, 2 or 4 ints (see the module docstring).
        padding: "SAME", "VALID" or 4 pairs in data_format order.
        data_format: "NHWC" (default) or "NCHW".
        dilations: None (1), an int or 1, 2 or 4 ints. Dilations above 1 need strides of 1, as
            in TensorFlow ("output striding is not supported for atrous convolutions",
            tf.nn.convolution's docstring).
        name: accepted for tf.nn's signature; unused.

    Returns:
        (N, OH, OW, K) for NHWC or (N, K, OH, OW) for NCHW, with input's dtype.

    Example (tf.nn.conv2d's docstring, VALID padding):
        >>> import numpy as np
        >>> from fastconv import tf
        >>> x = np.array([[2, 1, 2, 0, 1], [1, 3, 2, 2, 3], [1, 1, 3, 3, 0], [2, 2, 0, 1, 1],
        ...               [0, 0, 3, 1, 2]], np.float32)[None, :, :, None]
        >>> kernel = np.array([[[[2, 0.1]], [[3, 0.2]]], [[[0, 0.3]], [[1, 0.4]]]], np.float32)
        >>> y = tf.conv2d(x, kernel, strides=[1, 1, 1, 1], padding="VALID")
        >>> y.shape
        (1, 4, 4, 2)
        >>> y[0, :, :, 0]
        array([[10., 10.,  6.,  6.],
               [12., 15., 13., 13.],
               [ 7., 11., 16.,  7.],
               [10.,  7.,  4.,  7.]], dtype=float32)
    """
    data_format = _layout(data_format)
    channels = _rank4("input", input, data_format)[data_format.index("C")]
    per_group = _rank4("filters", filters, "HWIO (filter_height, filter_width, in_channels, "
                       "out_channels)")[2]
    stride = _window(strides, "strides", data_format)
    dilation = _window(1 if dilations is None else dilations, "dilations", data_format)
    if max(dilation) > 1 and max(stride) > 1:
        raise ValueError(f"dilations {dilations!r} above 1 need strides of 1, as in TensorFlow; "
                         f"got strides {strides!r}")
    if per_group < 1 or channels % per_group:
        raise ValueError(f"input has {channels} channels, not a multiple of the filters' "
                         f"in_channels {per_group} (filters {tuple(filters.shape)}, HWIO): "
                         f"groups = channels / in_channels must be a whole number")
    padding = _padding(padding, data_format)
    if _empty_cells(input, data_format):
        return _without_cells(input, data_format, filters.shape[3], filters.shape[:2], stride,
                              dilation, padding)
    if data_format == "NCHW":
        filters = filters.transpose(3, 2, 0, 1)  # a view in ops' NCHW weight layout, OIHW
    return ops.conv2d(input, filters, stride=stride, padding=padding, dilation=dilation,
                      groups=channels // per_group, data_format=data_format)


def conv2d_transpose(input, filters, output_shape, strides, padding="SAME", data_format="NHWC",
                     dilations=None, name=None):
    """tf.nn.conv2d_transpose: the gradient of :func:`conv2d` with respect to its input, for
    the convolution of an ``output_shape`` input with ``filters``.

    Args:
        input: (N, H, W, C_in) for NHWC or (N, C_in, H, W) for NCHW; float32 or float64.
        filters: (R, S, C_out, C_in), TensorFlow's ``[height, width, output_channels,
            in_channels]`` whatever the data_format.
        output_shape: the output's 4 sizes in data_format order. It decides the padding as in
            TensorFlow: the padding of the convolution from ``output_shape`` to ``input``'s
            shape, SAME's split with the odd pixel after; a shape that convolution does not map
            to ``input``'s shape is a ValueError.
        strides, dilations: an int or 1, 2 or 4 ints, as conv2d's.
        padding: "SAME", "VALID" or 4 explicit pairs in data_format order.
        data_format: "NHWC" (default) or "NCHW".
        name: accepted for tf.nn's signature; unused.

    Returns:
        An array of ``output_shape`` with input's dtype.
    """
    data_format = _layout(data_format)
    _rank4("input", input, data_format)
    _rank4("filters", filters, "(filter_height, filter_width, output_channels, in_channels)")
    out = tuple(int(v) for v in getattr(output_shape, "tolist", lambda: output_shape)())
    if len(out) != 4:
        raise ValueError(f"output_shape must be 4 sizes in {data_format} order, got "
                         f"{output_shape!r}")
    stride = _window(strides, "strides", data_format)
    dilation = _window(1 if dilations is None else dilations, "dilations", data_format)
    if max(dilation) > 1 and max(stride) > 1:
        raise ValueError(f"dilations {dilations!r} above 1 need strides of 1, as in TensorFlow; "
                         f"got strides {strides!r}")
    padding = _padding(padding, data_format)
    # the convolution's own filters: HWIO is TensorFlow's layout as it is, OIHW a view of it
    w = filters.transpose(3, 2, 0, 1) if data_format == "NCHW" else filters
    g = geometry.conv_geometry(out, w.shape, stride, padding, dilation, 1, data_format)
    if g.y_shape != tuple(input.shape):
        raise ValueError(f"output_shape {out} does not fit input {tuple(input.shape)}: the "
                         f"convolution of {out} with filters {tuple(filters.shape)}, strides "
                         f"{stride} and padding {padding!r} gives {g.y_shape}")
    return ops.conv2d_backward_input(input, w, out, stride=stride, padding=padding,
                                     dilation=dilation, data_format=data_format)


def max_pool2d(input, ksize, strides, padding, data_format="NHWC", name=None):
    """tf.nn.max_pool2d: the maximum of each window, padded cells never winning.

    Args:
        input: (N, H, W, C) for NHWC or (N, C, H, W) for NCHW; float32 or float64.
        ksize, strides: an int or 1, 2 or 4 ints (see the module docstring). No default.
        padding: "SAME", "VALID", or 4 pairs in data_format order, each side smaller than the
            window along its axis (TensorFlow's rule).
        data_format: "NHWC" (default) or "NCHW".
        name: accepted for tf.nn's signature; unused.

    Returns:
        (N, OH, OW, C) for NHWC or (N, C, OH, OW) for NCHW, with input's dtype.

    Example (tf.nn.max_pool2d's docstring, explicit padding of 1 on every side):
        >>> import numpy as np
        >>> from fastconv import tf
        >>> x = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]],
        ...              np.float32)[None, :, :, None]
        >>> tf.max_pool2d(x, ksize=(2, 2), strides=(2, 2),
        ...               padding=[[0, 0], [1, 1], [1, 1], [0, 0]])[0, :, :, 0]
        array([[ 1.,  3.,  4.],
               [ 9., 11., 12.]], dtype=float32)
    """
    data_format, window = _pool(input, ksize, strides, data_format)
    padding = _padding(padding, data_format)
    if _empty_cells(input, data_format):
        return _pooled_without_cells(input, data_format, window, padding)
    return ops.max_pool2d(input, padding=padding, **window)


def avg_pool2d(input, ksize, strides, padding, data_format="NHWC", name=None):
    """tf.nn.avg_pool2d: the mean of each window's real cells (padding is never counted).

    Args:
        input: (N, H, W, C) for NHWC or (N, C, H, W) for NCHW; float32 or float64.
        ksize, strides: an int or 1, 2 or 4 ints (see the module docstring). No default.
        padding: "SAME" or "VALID"; tf.nn.avg_pool2d takes no explicit padding.
        data_format: "NHWC" (default) or "NCHW".
        name: accepted for tf.nn's signature; unused.

    Returns:
        (N, OH, OW, C) for NHWC or (N, C, OH, OW) for NCHW, with input's dtype.
    """
    data_format, window = _pool(input, ksize, strides, data_format)
    padding = _padding(padding, data_format, explicit=False)
    if _empty_cells(input, data_format):
        return _pooled_without_cells(input, data_format, window, padding)
    return ops.avg_pool2d(input, padding=padding, **window)


def _pooled_without_cells(input, data_format, window, padding):
    return _without_cells(input, data_format, input.shape[data_format.index("C")],
                          window["kernel_size"], window["stride"], (1, 1), padding)
