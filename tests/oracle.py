"""The one oracle of the op tests: what an op and its gradients must give, from two independent
sources side by side, fastconv's float64 NumPy reference (algo "reference", never the code under
test) and PyTorch's float64 ops (autograd for the gradients), with the tolerances.

An op test is a few lines::

    y = ops.conv2d(x, w, b, activation="relu", algo=algo, **kwargs)
    oracle.check({"y": y}, oracle.conv2d(x, w, b, activation="relu", **kwargs))
"""

import numpy as np


def random(rng, shape, dtype=np.float64):
    """Fresh standard-normal data, never zeros."""
    return rng.standard_normal(shape).astype(dtype)


def tie_free(rng, shape, dtype=np.float64):
    """A shuffled linspace: distinct values, so every max-pooling window has one maximum."""
    values = np.linspace(-1, 1, int(np.prod(shape)))
    return rng.permutation(values).reshape(shape).astype(dtype)


def rel_error(actual, expected):
    """Norm-relative error, the measure every tolerance here is stated in."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(np.linalg.norm(expected), np.finfo(np.float64).tiny)
    return np.linalg.norm(actual - expected) / scale


def tolerance(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def to_nchw(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 3, 1, 2)


def from_nchw(a, layout):
    return a if layout == "NCHW" else a.transpose(0, 2, 3, 1)


def check(got, expected):
    """Each array of ``got`` ({name: array}, any of the names ``expected`` has) matches both
    sources of ``expected`` within the tolerance of its dtype, with its shape."""
    for name, array in got.items():
        array = np.asarray(array)
        for source, want in expected.items():
            error = rel_error(array, want[name])
            assert error < tolerance(array.dtype), f"{name} against {source}: {error:.2e}"


def nonfinite(a):
    """Where ``a`` is NaN, +inf and -inf: the pattern that NaN-safe kernels share with PyTorch
    whatever the order of their sums (inf - inf is NaN in any order)."""
    a = np.asarray(a)
    return np.stack([np.isnan(a), np.isposinf(a), np.isneginf(a)])


def check_nonfinite(got, expected, exact=True):
    """Each array of ``got`` is NaN, +inf and -inf exactly where PyTorch's is (``exact``), or
    at least finite wherever PyTorch's is (not ``exact``: where a kernel skips a padded cell
    that PyTorch multiplies, 0 * inf stays out of its sum)."""
    for name, array in got.items():
        mine, theirs = nonfinite(array), nonfinite(expected["torch"][name])
        if exact:
            assert np.array_equal(mine, theirs), f"{name}: {mine.sum(axis=(1, 2, 3, 4))} " \
                f"NaN/+inf/-inf cells, PyTorch {theirs.sum(axis=(1, 2, 3, 4))}"
        else:
            assert not (mine.any(axis=0) & ~theirs.any(axis=0)).any(), name


def _float64(a):
    return None if a is None else np.asarray(a, np.float64)


def _torch(a, layout="NCHW"):
    import torch
    return torch.from_numpy(np.ascontiguousarray(to_nchw(a, layout), np.float64))


# --- conv2d --------------------------------------------------------------------------------------

# An activation's slope from its output y, as the kernels take it in a fused backward.
SLOPES = {None: lambda y: 1.0, "relu": lambda y: y > 0, "tanh": lambda y: (1 - y) * (1 + y),
          "sigmoid": lambda y: y * (1 - y)}


def _channel_sums(a, layout):
    """a summed over all but its channel axis: a bias gradient."""
    return a.sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2))


def slope_magnitudes(gy, slope, layout):
    """Per channel, the norm of the sum of |gy * slope| over the batch and pixels: the scale of
    a bias gradient's rounding (sum gy * slope, the slope taken from y in the dtype) where its
    terms cancel and the norm-relative bound of its sum says nothing."""
    return np.linalg.norm(_channel_sums(np.abs(np.float64(gy) * slope), layout))


def slope_rounding(x, w, gy, y, y_reference, activation, data_format="NCHW", **kwargs):
    """The norms of what gx, gw and gb of a fused backward (gy * slope(y), the slope taken from the
    forward's ``y``) owe to y's rounding: the float64 gradients of gy * (slope(y) - slope(y
    exact)). Near a saturated tanh or sigmoid the slope cancels (1 - y*y at y = -0.999864
    loses 2e-4 of its relative accuracy to y's float32 rounding), where no tolerance of the
    dtype can hold and PyTorch, taking the slope from y too, owes the same."""
    from fastconv import ops

    slope = SLOPES[activation]
    gy64, y64, y_exact = map(_float64, (gy, y, y_reference))
    drift = gy64 * (np.float64(slope(y64)) - np.float64(slope(y_exact)))
    kwargs = dict(kwargs, data_format=data_format, algo="reference")
    return {"gx": np.linalg.norm(ops.conv2d_backward_input(drift, _float64(w), x.shape, **kwargs)),
            "gw": np.linalg.norm(ops.conv2d_backward_weight(drift, _float64(x), w.shape,
                                                            **kwargs)),
            "gb": np.linalg.norm(_channel_sums(drift, data_format))}


# d activation / d pre-activation z, from z (the kernels take it from the output instead)
_DERIVATIVE = {"relu": lambda z: z > 0, "tanh": lambda z: 1 - np.tanh(z) ** 2,
               "sigmoid": lambda z: np.exp(-np.logaddexp(0, -z) - np.logaddexp(0, z))}


def conv2d(x, w, b=None, gy=None, activation=None, stride=1, padding=0, dilation=1, groups=1,
           data_format="NCHW", through_activation=False):
    """{"reference": {...}, "torch": {...}}, each with y = activation(conv(x, w) + b) and,
    given ``gy``, the gradients gx, gw and gb of the convolution itself (gy taken as the
    gradient of its output before the activation, as ops.conv2d_backward_* take it, or with
    ``through_activation`` as the gradient of y, as ops.conv2d_backward(activation=) takes
    it), in the caller's layout (NHWC with HWIO filters, as fastconv.ops)."""
    import torch
    import torch.nn.functional as F

    from fastconv import geometry, ops

    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  data_format=data_format)
    x64, w64, b64, gy64 = map(_float64, (x, w, b, gy))
    reference = {"y": ops.conv2d(x64, w64, b64, activation=activation, algo="reference",
                                 **kwargs)}
    if gy is not None and through_activation and activation is not None:
        gy64 = gy64 * _DERIVATIVE[activation](ops.conv2d(x64, w64, b64, algo="reference",
                                                         **kwargs))
    if gy is not None:
        reference["gx"] = ops.conv2d_backward_input(gy64, w64, x.shape, algo="reference",
                                                    **kwargs)
        reference["gw"] = ops.conv2d_backward_weight(gy64, x64, w.shape, algo="reference",
                                                     **kwargs)
        reference["gb"] = _channel_sums(gy64, data_format)

    g = geometry.conv_geometry(x.shape, w.shape, stride, padding, dilation, groups, data_format)
    top, bottom, left, right = g.padding
    xt = _torch(x64, data_format).requires_grad_()
    wt = torch.from_numpy(np.ascontiguousarray(
        w64 if data_format == "NCHW" else w64.transpose(3, 2, 0, 1))).requires_grad_()
    bt = torch.zeros(g.K, dtype=torch.float64) if b is None else torch.from_numpy(b64)
    bt.requires_grad_()
    zt = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, bt, stride=g.stride,
                  dilation=g.dilation, groups=groups)
    yt = zt if activation is None else getattr(torch, activation)(zt)
    theirs = {"y": from_nchw(yt.detach().numpy(), data_format)}
    if gy is not None:
        (yt if through_activation else zt).backward(_torch(_float64(gy), data_format))
        theirs["gx"] = from_nchw(xt.grad.numpy(), data_format)
        gw = wt.grad.numpy()
        theirs["gw"] = gw if data_format == "NCHW" else gw.transpose(2, 3, 1, 0)
        theirs["gb"] = bt.grad.numpy()
    return {"reference": reference, "torch": theirs}


# --- pooling -------------------------------------------------------------------------------------

def pool2d(kind, x, gy=None, kernel_size=None, stride=None, padding=0, ceil_mode=False,
           count_include_pad=True, data_format="NCHW", dilation=1, divisor_override=None):
    """max (``kind`` "max") or average pooling: {"reference": {...}, "torch": {...}}, each
    with y and, given ``gy``, gx. What PyTorch's pooling has no argument for, fastconv's
    "same"/"valid" padding (TensorFlow's: padded cells never win a max nor count in an average)
    and explicit ``((top, bottom), (left, right))`` padding, is given to PyTorch with F.pad."""
    import torch
    import torch.nn.functional as F

    from fastconv import geometry, registry

    count_pad = count_include_pad if kind == "avg" else True
    p = geometry.pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode, count_pad,
                               data_format, dilation, divisor_override)
    x64, gy64 = _float64(x), _float64(gy)
    op = f"{kind}_pool2d"
    impls = {name: registry.implementations(name, "cpu")["reference"]
             for name in (op, f"{op}_backward")}
    reference = {"y": impls[op](p, x64)}
    if gy is not None:
        reference["gx"] = impls[f"{op}_backward"](p, gy64, *([x64] if kind == "max" else []))

    xt = _torch(x64, data_format).requires_grad_()
    top, bottom, left, right = p.padding
    if not (isinstance(padding, str) or geometry.per_side(padding)):  # PyTorch's own padding
        pads, padded = (top, left), xt
    else:
        pads, padded = 0, F.pad(xt, (left, right, top, bottom),
                                value=-np.inf if kind == "max" else 0.0)
    if kind == "max":
        yt = F.max_pool2d(padded, p.kernel, p.stride, pads, p.dilation, ceil_mode=ceil_mode)
    elif pads == 0 and not (p.count_padding or p.divisor):  # divide by the real cells
        ones = F.pad(torch.ones_like(xt), (left, right, top, bottom))
        yt = (F.avg_pool2d(padded, p.kernel, p.stride, divisor_override=1)
              / F.avg_pool2d(ones, p.kernel, p.stride, divisor_override=1))
    else:
        yt = F.avg_pool2d(padded, p.kernel, p.stride, pads, ceil_mode=ceil_mode,
                          count_include_pad=count_include_pad,
                          divisor_override=divisor_override)
    theirs = {"y": from_nchw(yt.detach().numpy(), data_format)}
    if gy is not None:
        yt.backward(_torch(gy64, data_format))
        theirs["gx"] = from_nchw(xt.grad.numpy(), data_format)
    return {"reference": reference, "torch": theirs}


# --- batch normalisation -------------------------------------------------------------------------

def batch_norm2d(x, weight=None, bias=None, running_mean=None, running_var=None, training=False,
                 momentum=0.1, eps=1e-5, activation=None, gy=None, data_format="NCHW"):
    """{"reference": {...}, "torch": {...}}, each with y = activation(batch_norm(x)), the
    running buffers after the call (running_mean, running_var, when given) and, given ``gy``
    (dL/dy), gx, gweight and gbias (the last two also for weight None: the gradients of an
    implicit weight of ones and bias of zeros)."""
    import torch
    import torch.nn.functional as F

    from fastconv import registry

    x64, gy64 = _float64(x), _float64(gy)
    runs = {}
    buffers = [None if a is None else np.array(a, np.float64) for a in (running_mean,
                                                                         running_var)]
    impls = {op: registry.implementations(op, "cpu")["reference"]
             for op in ("batch_norm2d", "batch_norm2d_backward")}
    y, mean, invstd = impls["batch_norm2d"](data_format, x64, _float64(weight), _float64(bias),
                                            *buffers, training,
                                            training and running_mean is not None, momentum, eps,
                                            activation)
    runs["reference"] = {"y": y, "running_mean": buffers[0], "running_var": buffers[1]}
    if gy is not None:
        gx, gw, gb = impls["batch_norm2d_backward"](data_format, gy64, x64, _float64(weight),
                                                    mean, invstd, training, y, activation)
        runs["reference"].update(gx=gx, gweight=gw, gbias=gb)

    c = x.shape[1 if data_format == "NCHW" else 3]
    xt = _torch(x64, data_format).requires_grad_()
    wt = torch.ones(c, dtype=torch.float64) if weight is None else torch.from_numpy(
        _float64(weight))
    bt = torch.zeros(c, dtype=torch.float64) if bias is None else torch.from_numpy(
        _float64(bias))
    wt.requires_grad_(), bt.requires_grad_()
    rt = [None if a is None else torch.tensor(np.float64(a)) for a in (running_mean,
                                                                       running_var)]
    yt = F.batch_norm(xt, *rt, wt, bt, training, momentum, eps)
    if activation is not None:
        yt = getattr(torch, activation)(yt)
    runs["torch"] = {"y": from_nchw(yt.detach().numpy(), data_format),
                     "running_mean": None if rt[0] is None else rt[0].numpy(),
                     "running_var": None if rt[1] is None else rt[1].numpy()}
    if gy is not None:
        yt.backward(_torch(gy64, data_format))
        runs["torch"].update(gx=from_nchw(xt.grad.numpy(), data_format),
                             gweight=wt.grad.numpy(), gbias=bt.grad.numpy())
    return runs


def adaptive_avg_pool2d(x, output_size, gy=None, data_format="NCHW"):
    """{"reference": {...}, "torch": {...}}, each with y and, given ``gy``, gx."""
    import torch.nn.functional as F

    from fastconv import geometry, registry

    p = geometry.adaptive_pool_geometry(x.shape, output_size, data_format)
    impls = {op: registry.implementations(op, "cpu")["reference"]
             for op in ("adaptive_avg_pool2d", "adaptive_avg_pool2d_backward")}
    reference = {"y": impls["adaptive_avg_pool2d"](p, _float64(x))}
    xt = _torch(_float64(x), data_format).requires_grad_()
    yt = F.adaptive_avg_pool2d(xt, output_size)
    theirs = {"y": from_nchw(yt.detach().numpy(), data_format)}
    if gy is not None:
        reference["gx"] = impls["adaptive_avg_pool2d_backward"](p, _float64(gy))
        yt.backward(_torch(_float64(gy), data_format))
        theirs["gx"] = from_nchw(xt.grad.numpy(), data_format)
    return {"reference": reference, "torch": theirs}
