"""Shape arithmetic and argument normalisation, written once for every op and backend.

Ops validate and resolve their arguments here into a frozen geometry; kernels and baselines only
read the geometry and never recompute a shape.

Padding rules (shared by conv2d and the pooling ops):

- an int ``p`` pads every side by ``p``; a pair ``(ph, pw)`` pads top/bottom by ``ph`` and
  left/right by ``pw``; conv2d also takes ``((top, bottom), (left, right))``;
- ``"valid"`` pads nothing: windows stay inside the input;
- ``"same"`` follows TensorFlow for any stride and dilation: ``out = ceil(in / stride)`` and the
  total padding ``max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0)`` is split with the odd
  pixel after (bottom/right). The words are case-insensitive::

      in = 6, k = 3, stride = 2
      VALID   [a b c d e f]       SAME   [a b c d e f] 0
               |w0-|                      |w0-|
                   |w1-|                      |w1-|
              out = 2                             |w2--|
                                          out = 3, pads (0, 1)
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass

LAYOUTS = ("NCHW", "NHWC")
ACTIVATIONS = (None, "relu", "tanh", "sigmoid")


def _is_int(value) -> bool:
    """An integer, but not a bool (True is an int to Python, never a size here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def pair(value, name: str, minimum: int) -> tuple[int, int]:
    """Expand an int or a pair of ints to ``(h, w)``, each at least ``minimum``."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        h, w = value
    else:
        h = w = value
    for v in (h, w):
        if not _is_int(v):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(h), int(w)


def _integer(value, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def layout(data_format) -> str:
    """Normalise ``data_format`` to "NCHW" or "NHWC"."""
    name = data_format.upper() if isinstance(data_format, str) else data_format
    if name not in LAYOUTS:
        raise ValueError(f"data_format must be one of {LAYOUTS}, got {data_format!r}")
    return name


def activation(name):
    """Normalise ``activation`` to None, "relu", "tanh" or "sigmoid"."""
    key = name.lower() if isinstance(name, str) else name
    if key not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return key


def same_padding(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding ``(before, after)`` for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _padding_word(padding):
    word = padding.lower()
    if word not in ("same", "valid"):
        raise ValueError(f"padding must be 'same', 'valid' or numbers, got {padding!r}")
    return word


def per_side(padding) -> bool:
    """Whether ``padding`` has the per-side form ``((top, bottom), (left, right))``."""
    return (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding))


def _explicit_padding(padding, allow_asymmetric: bool) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` from an int, a pair or ``((t, b), (l, r))``."""
    if per_side(padding) and allow_asymmetric:
        (top, bottom), (left, right) = (pair(p, "padding", 0) for p in padding)
        return top, bottom, left, right
    ph, pw = pair(padding, "padding", 0)
    return ph, ph, pw, pw


def _spatial(x_shape, data_format):
    n, a, b, c = x_shape
    return (n, a, b, c) if data_format == "NCHW" else (n, c, a, b)


def _no_output(window, x_shape, padded_hw):
    return ValueError(f"the window {window} is larger than the padded input: x "
                      f"{tuple(x_shape)} padded to height x width {padded_hw}, so no output")


def nchw_view(a, layout: str):
    """An NCHW-indexed view of a 4-D array in ``layout`` (no copy)."""
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def oihw_view(w, layout: str):
    """An OIHW-indexed view of the filters of a convolution in ``layout`` (HWIO for NHWC)."""
    return w if layout == "NCHW" else w.transpose(3, 2, 0, 1)


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution fully resolved: sizes, strides, dilations and explicit paddings.

    x is (N, C, H, W) in NCHW terms whatever the layout, w is (K, C // groups, R, S), y is
    (N, K, OH, OW). Paddings are explicit per side.
    """
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    OH: int
    OW: int
    groups: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    layout: str

    @property
    def x_shape(self):
        return self._shape(self.C, self.H, self.W)

    @property
    def y_shape(self):
        return self._shape(self.K, self.OH, self.OW)

    @property
    def w_shape(self):
        oihw = (self.K, self.C // self.groups, self.R, self.S)
        return oihw if self.layout == "NCHW" else (self.R, self.S, self.C // self.groups, self.K)

    def _shape(self, c, h, w):
        return (self.N, c, h, w) if self.layout == "NCHW" else (self.N, h, w, c)

    @property
    def flops(self) -> int:
        """Multiply-adds times two of the forward pass (also each backward's cost)."""
        return 2 * self.N * self.K * self.OH * self.OW * (self.C // self.groups) * self.R * self.S

    @property
    def taps(self) -> tuple[int, int, int, int, int, int]:
        """The kernels' tap arguments: sh, sw, pt, pl (bottom and right padding are implicit in
        the output size), dh, dw."""
        return (*self.stride, self.padding[0], self.padding[2], *self.dilation)

    @property
    def pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded convolution: a plain matrix product, no im2col."""
        return self.R == self.S == 1 and self.stride == (1, 1) and self.padding == (0, 0, 0, 0)

    @property
    def plain_3x3(self) -> bool:
        """A 3x3 window at stride 1, undilated: what Winograd's F(m x m, 3 x 3) computes."""
        return (self.R, self.S) == (3, 3) and self.stride == (1, 1) and self.dilation == (1, 1)

    @property
    def whole_window(self) -> bool:
        """One unpadded, undilated window covering the whole input (LeNet's C5, a fully
        connected layer written as a convolution): each image's pixels are its one column."""
        return ((self.R, self.S) == (self.H, self.W) and self.padding == (0, 0, 0, 0)
                and self.dilation == (1, 1))

    def channel_slices(self):
        """Per group: its input channels and its output channels."""
        cg, kg = self.C // self.groups, self.K // self.groups
        return [(slice(i * cg, (i + 1) * cg), slice(i * kg, (i + 1) * kg))
                for i in range(self.groups)]

    def group_slices(self):
        """Per group: its rows of the im2col columns (C/groups*R*S of them) and its output
        channels."""
        rows, kg = (self.C // self.groups) * self.R * self.S, self.K // self.groups
        return [(slice(i * rows, (i + 1) * rows), slice(i * kg, (i + 1) * kg))
                for i in range(self.groups)]

    @property
    def image_columns(self) -> int:
        """The elements of one image's im2col columns: C*R*S rows of OH*OW pixels."""
        return self.C * self.R * self.S * self.OH * self.OW

    def batch_chunks(self, itemsize: int, budget: int):
        """Batch slices whose im2col columns fit in ``budget`` bytes (at least one image each)."""
        step = max(1, budget // (self.image_columns * itemsize))
        return [slice(i, min(i + step, self.N)) for i in range(0, self.N, step)]

    def key(self) -> str:
        """A shape signature for the autotuning cache."""
        return (f"{self.layout}:N{self.N}C{self.C}H{self.H}W{self.W}K{self.K}R{self.R}S{self.S}"
                f"g{self.groups}s{self.stride}d{self.dilation}p{self.padding}")


def _memoised(resolve):
    """``resolve`` remembering its results: a layer's arguments repeat call after call, and
    resolving them is a sizeable part of a small op's host time. The key is the arguments'
    repr, which tells apart what compares equal but is refused differently (1, True, 1.0);
    errors are raised every time, never stored."""
    results = {}

    @functools.wraps(resolve)
    def lookup(*args, **kwargs):
        key = repr((args, kwargs))
        found = results.get(key)
        if found is None:
            found = resolve(*args, **kwargs)
            if len(results) >= 4096:
                results.clear()
            results[key] = found
        return found
    return lookup


@_memoised
def conv_geometry(x_shape, w_shape, stride, padding, dilation, groups, data_format) -> ConvGeometry:
    """Resolve a convolution's arguments; raises ValueError/TypeError naming the argument."""
    data_format = layout(data_format)
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D {data_format}, got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        want = "OIHW" if data_format == "NCHW" else "HWIO"
        raise ValueError(f"w must be 4-D {want}, got shape {tuple(w_shape)}")
    n, c, h, w = _spatial(x_shape, data_format)
    if data_format == "NCHW":
        k, cg, r, s = w_shape
    else:
        r, s, cg, k = w_shape
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if c % groups or k % groups:
        raise ValueError(f"groups={groups} must divide the input channels {c} and the output "
                         f"channels {k} (x {tuple(x_shape)}, w {tuple(w_shape)})")
    if cg * groups != c:
        raise ValueError(f"w expects {cg * groups} input channels ({cg} per group x groups="
                         f"{groups}) but x has {c} (x {tuple(x_shape)}, w {tuple(w_shape)})")
    if min(c, h, w, k, r, s) < 1 or n < 0:
        raise ValueError(f"x {tuple(x_shape)} and w {tuple(w_shape)} must have no empty axis "
                         "but the batch")
    sh, sw = pair(stride, "stride", 1)
    dh, dw = pair(dilation, "dilation", 1)
    if isinstance(padding, str):
        if _padding_word(padding) == "same":
            pads = same_padding(h, r, sh, dh) + same_padding(w, s, sw, dw)
        else:
            pads = (0, 0, 0, 0)
    else:
        pads = _explicit_padding(padding, allow_asymmetric=True)
    top, bottom, left, right = pads
    eh, ew = (r - 1) * dh + 1, (s - 1) * dw + 1
    oh = (h + top + bottom - eh) // sh + 1
    ow = (w + left + right - ew) // sw + 1
    if min(oh, ow) < 1:
        raise _no_output(f"of w {tuple(w_shape)} (dilated {eh} x {ew})", x_shape,
                         (h + top + bottom, w + left + right))
    return ConvGeometry(n, c, h, w, k, r, s, oh, ow, int(groups), (sh, sw), (dh, dw),
                        (top, bottom, left, right), data_format)


@dataclass(frozen=True)
class ConvTransposeGeometry:
    """A transposed convolution as the convolution it transposes: ``conv`` maps the output's
    first ``conv.H`` x ``conv.W`` cells (its core) to x, whose gradient the transposed
    convolution computes; ``extra`` (rows, columns) of output_padding past the core's last
    row and column, which no input reaches (zero before the bias), make up ``y_shape``."""
    conv: ConvGeometry
    y_shape: tuple[int, int, int, int]
    extra: tuple[int, int]

    @property
    def core_shape(self):
        return self.conv.x_shape


@_memoised
def conv_transpose_geometry(x_shape, w_shape, stride, padding, output_padding, dilation,
                            groups, data_format) -> ConvTransposeGeometry:
    """Resolve a transposed convolution's arguments (PyTorch's conv_transpose2d): x
    (N, C_in, H, W), w (C_in, C_out/groups, R, S) for NCHW or (R, S, C_out/groups, C_in) for
    NHWC, out = (in - 1) * stride - pad_before - pad_after + dilation * (k - 1) +
    output_padding + 1; output_padding must be smaller than the stride or the dilation."""
    data_format = layout(data_format)
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D {data_format}, got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        want = "(C_in, C_out/groups, R, S)" if data_format == "NCHW" else (
            "(R, S, C_out/groups, C_in)")
        raise ValueError(f"w must be 4-D {want}, got shape {tuple(w_shape)}")
    n, c, h, w = _spatial(x_shape, data_format)
    k, cg, r, s = w_shape if data_format == "NCHW" else (w_shape[3], w_shape[2], *w_shape[:2])
    if k != c:
        raise ValueError(f"w {tuple(w_shape)} is for {k} input channels but x {tuple(x_shape)} "
                         f"has {c}")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if isinstance(padding, str):
        raise ValueError(f"padding must be numbers for a transposed convolution (PyTorch's), "
                         f"got {padding!r}")
    top, bottom, left, right = _explicit_padding(padding, allow_asymmetric=True)
    (sh, sw), (dh, dw) = pair(stride, "stride", 1), pair(dilation, "dilation", 1)
    oph, opw = pair(output_padding, "output_padding", 0)
    if not (oph < sh or oph < dh) or not (opw < sw or opw < dw):
        raise ValueError(f"output_padding {(oph, opw)} must be smaller than the stride "
                         f"{(sh, sw)} or the dilation {(dh, dw)}")
    out_h = (h - 1) * sh - top - bottom + dh * (r - 1) + oph + 1
    out_w = (w - 1) * sw - left - right + dw * (s - 1) + opw + 1
    if min(out_h, out_w) < 1 or min(h, w, r, s, c, cg) < 1 or n < 0:
        raise ValueError(f"x {tuple(x_shape)} and w {tuple(w_shape)} with padding "
                         f"{(top, bottom, left, right)} give no output ({out_h} x {out_w})")
    extra = max(oph - bottom, 0), max(opw - right, 0)
    core = (n, cg * groups, out_h - extra[0], out_w - extra[1])
    core = core if data_format == "NCHW" else (n, core[2], core[3], core[1])
    conv = conv_geometry(core, w_shape, (sh, sw),
                         ((top, max(bottom - oph, 0)), (left, max(right - opw, 0))), (dh, dw),
                         groups, data_format)
    y_shape = (n, cg * groups, out_h, out_w)
    return ConvTransposeGeometry(conv, y_shape if data_format == "NCHW" else (
        n, out_h, out_w, cg * groups), extra)


class _Planes:
    """The shapes of an op from (N, C, H, W) planes to (N, C, OH, OW) ones, in its layout."""

    @property
    def x_shape(self):
        return (self.N, self.C, self.H, self.W) if self.layout == "NCHW" else (
            self.N, self.H, self.W, self.C)

    @property
    def y_shape(self):
        return (self.N, self.C, self.OH, self.OW) if self.layout == "NCHW" else (
            self.N, self.OH, self.OW, self.C)


@dataclass(frozen=True)
class PoolGeometry(_Planes):
    """A 2-D pooling fully resolved, in NCHW terms whatever the layout.

    Window (oh, ow) starts at ``oh * stride - pad_top`` (and the same along the width) and
    takes every ``dilation``-th cell, ``kernel`` of them. ``count_padding`` says whether an
    average divides by the window clipped to the padded input (PyTorch's count_include_pad) or
    by the number of real cells (count_include_pad=False, and TensorFlow's SAME/VALID);
    ``divisor``, when not 0, replaces both (PyTorch's divisor_override).
    """
    N: int
    C: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    OH: int
    OW: int
    count_padding: bool
    divisor: int
    layout: str

    @property
    def extent(self) -> tuple[int, int]:
        """The window's span in cells, (kernel - 1) * dilation + 1 along each axis."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation, strict=True))

    def key(self) -> str:
        return (f"{self.layout}:N{self.N}C{self.C}H{self.H}W{self.W}k{self.kernel}s{self.stride}"
                f"d{self.dilation}p{self.padding}c{int(self.count_padding)}v{self.divisor}")


def _planes(x_shape, data_format):
    """(layout, (N, C, H, W)) of a pooling's input, checked: 4-D, no empty axis but the
    batch."""
    data_format = layout(data_format)
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D {data_format}, got shape {tuple(x_shape)}")
    n, c, h, w = _spatial(x_shape, data_format)
    if min(c, h, w) < 1 or n < 0:
        raise ValueError(f"x must have no empty axis but the batch, got shape {tuple(x_shape)}")
    return data_format, (n, c, h, w)


def _pool_size(size, extent, stride, before, after, ceil_mode):
    """PyTorch's pooled size (pooling_output_shape_pad_lr): with ceil_mode the last window
    must start inside the input or its leading padding."""
    span = size + before + after - extent
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


def _tapless_window(size, out, k, stride, dilation, before):
    """The first window along an axis none of whose taps falls on the input, or None. Only a
    dilation can skip a window over the input: PyTorch then returns -inf and an index outside
    the plane, which its backward writes through."""
    if dilation == 1:
        return None
    for o in range(out):
        start = o * stride - before
        first = start if start >= 0 else start + (-start + dilation - 1) // dilation * dilation
        if first >= size or first > start + (k - 1) * dilation:
            return o
    return None


def _pool_padding(padding, kernel, ceil_mode):
    """(top, bottom, left, right) of a pooling's numeric padding, checked by the rule of the
    framework whose form it has: an int or a pair is PyTorch's, at most half the window;
    ``((top, bottom), (left, right))`` is TensorFlow's explicit padding, each side smaller
    than the window, and without ceil_mode (which TensorFlow does not have)."""
    (kh, kw), pads = kernel, _explicit_padding(padding, allow_asymmetric=True)
    top, bottom, left, right = pads
    if per_side(padding):
        if max(top, bottom) >= kh or max(left, right) >= kw:
            raise ValueError(f"padding (({top}, {bottom}), ({left}, {right})) must be smaller "
                             f"than kernel_size {kernel} on every side")
        if ceil_mode:
            raise ValueError(f"ceil_mode needs PyTorch's symmetric padding (an int or a pair), "
                             f"got padding={padding!r}")
    elif 2 * top > kh or 2 * left > kw:
        raise ValueError(f"padding {(top, left)} must be at most half of kernel_size {kernel}")
    return pads


@_memoised
def pool_geometry(x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad, data_format,
                  dilation=1, divisor_override=None) -> PoolGeometry:
    """Resolve a pooling's arguments; raises ValueError/TypeError naming the argument."""
    data_format, (n, c, h, w) = _planes(x_shape, data_format)
    kh, kw = pair(kernel_size, "kernel_size", 1)
    sh, sw = pair(kernel_size if stride is None else stride, "stride", 1)
    dh, dw = pair(dilation, "dilation", 1)
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    divisor = 0 if divisor_override is None else _integer(divisor_override, "divisor_override")
    if divisor_override is not None and divisor == 0:
        raise ValueError("divisor_override must not be zero")
    if isinstance(padding, str):
        if ceil_mode:
            raise ValueError(f"ceil_mode applies to numeric padding, not padding={padding!r}")
        if _padding_word(padding) == "same":
            pads = same_padding(h, kh, sh, dh) + same_padding(w, kw, sw, dw)
            oh, ow = -(-h // sh), -(-w // sw)
        else:
            pads = (0, 0, 0, 0)
            oh, ow = (h - eh) // sh + 1, (w - ew) // sw + 1
        count_include_pad = False
    else:
        pads = _pool_padding(padding, (kh, kw), ceil_mode)
        oh = _pool_size(h, eh, sh, pads[0], pads[1], ceil_mode)
        ow = _pool_size(w, ew, sw, pads[2], pads[3], ceil_mode)
    if min(oh, ow) < 1:
        raise _no_output(f"kernel_size {(kh, kw)} dilated by {(dh, dw)}", x_shape,
                         (h + pads[0] + pads[1], w + pads[2] + pads[3]))
    for axis, size, out, k, st, d, before in (("height", h, oh, kh, sh, dh, pads[0]),
                                              ("width", w, ow, kw, sw, dw, pads[2])):
        empty = _tapless_window(size, out, k, st, d, before)
        if empty is not None:
            raise ValueError(f"window {empty} along the {axis} of x {tuple(x_shape)} (kernel_size "
                             f"{(kh, kw)}, dilation {(dh, dw)}, padding {pads[0::2]}) has no "
                             f"tap on the input: every one falls in the padding or between "
                             f"cells")
    return PoolGeometry(n, c, h, w, (kh, kw), (sh, sw), (dh, dw), pads, oh, ow,
                        bool(count_include_pad), divisor, data_format)


@dataclass(frozen=True)
class AdaptivePoolGeometry(_Planes):
    """An adaptive pooling: (N, C, H, W) planes to (N, C, OH, OW), window o along an axis of
    size H spanning [floor(o * H / OH), ceil((o + 1) * H / OH)) (PyTorch's)."""
    N: int
    C: int
    H: int
    W: int
    OH: int
    OW: int
    layout: str

    def key(self) -> str:
        return f"{self.layout}:N{self.N}C{self.C}H{self.H}W{self.W}o{self.OH}x{self.OW}"


@_memoised
def adaptive_pool_geometry(x_shape, output_size, data_format) -> AdaptivePoolGeometry:
    """Resolve an adaptive pooling's arguments: ``output_size`` an int, or a pair whose None
    keeps that axis's input size, as PyTorch's."""
    data_format, (n, c, h, w) = _planes(x_shape, data_format)
    size = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    if len(size) != 2 or not all(s is None or _is_int(s) for s in size):
        raise TypeError(f"output_size must be an int or a pair of ints (or None), got "
                        f"{output_size!r}")
    oh, ow = (h if size[0] is None else int(size[0])), (w if size[1] is None else int(size[1]))
    if min(oh, ow) < 1:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return AdaptivePoolGeometry(n, c, h, w, oh, ow, data_format)
