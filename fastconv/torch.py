"""fastconv's kernels under PyTorch: custom ops, torch.nn.functional's functions, drop-in modules
and ``convert``.

Each op is a ``torch.library`` custom op in the ``fastconv`` namespace (``torch.ops.fastconv.
conv2d`` and so on) with a fake implementation, which gives torch.compile and torch.export
its output's shape without running it, and a registered autograd formula whose backward calls
fastconv's backward ops, themselves custom ops: ``torch.compile(convert(model),
fullgraph=True)`` traces a network through them with no graph break, and ``torch.export``
exports it. The functions here take torch.nn.functional's arguments (unbatched (C, H, W) input
too), resolve them with :mod:`fastconv.geometry` (so bad ones raise its ValueError or TypeError
naming them, before anything runs) and call the ops with explicit sizes. Shapes are static:
torch.compile's dynamic shapes would specialise them.

CPU tensors cross as zero-copy NumPy views (``Tensor.numpy()`` of a detached, contiguous
tensor) and results come back through ``torch.from_numpy``; CUDA tensors cross as zero-copy
CuPy arrays through DLPack and come back the same way, the kernels queued on torch's current
stream. float32 and float64.

Import this module (or fastconv) before torch: fastconv starts its OpenMP runtime on import and
torch, imported after, shares it, so one pool of threads runs both. The other way round torch
loads its own, whose workers spin after each torch op on the cores fastconv's next kernel needs
(several times slower: benchmarks/results/torch_adapter.md). Converted models train under
DistributedDataParallel as they are (examples/ddp_train.py).
"""

import copy
import functools
import warnings

import numpy as np
import torch
from torch import nn

from . import device, geometry, ops

# --- crossing between torch and fastconv --------------------------------------------------------


def _array(t):
    """A zero-copy NumPy (CPU) or CuPy (CUDA) view of tensor ``t``'s data; None stays None."""
    if t is None:
        return None
    t = t.detach().contiguous()
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        return device.cuda_backend().adopt(t)
    raise RuntimeError(f"a tensor is on {t.device}: fastconv runs CPU and CUDA tensors")


def _tensor(array):
    return torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)


def _on_torch_stream(compute):
    """``compute(first, *args)`` with fastconv's kernels queued on torch's current stream of
    ``first``'s GPU, behind the work torch queued there."""
    @functools.wraps(compute)
    def run(first, *args):
        if not first.is_cuda:
            return compute(first, *args)
        stream = torch.cuda.current_stream(first.device).cuda_stream
        with device.cuda_backend().use_stream(stream):
            return compute(first, *args)
    return run


class _Op:
    """A fastconv op as PyTorch sees it: the custom op ``fastconv::<name>``, which torch.compile,
    torch.export and any tracing or dispatch mode see, and in plain eager mode the same
    computation and autograd formula as a torch.autograd.Function, which skips the
    dispatcher's passes through the custom op (20-30 us a call, more than the adapter's budget
    for its own overhead)."""

    def __init__(self, compute, schema):
        self.compute = _on_torch_stream(compute)
        self.custom = torch.library.custom_op(f"fastconv::{compute.__name__.lstrip('_')}",
                                              self.compute, mutates_args=(), schema=schema)
        self.function = None

    def register_fake(self, fake):
        self.custom.register_fake(fake)
        return fake

    def register_autograd(self, backward, setup_context):
        self.custom.register_autograd(backward, setup_context=setup_context)

        def forward(ctx, *inputs):  # forward(ctx, ...): a separate setup_context costs 15 us
            output = self.compute(*inputs)
            setup_context(ctx, inputs, output)
            return output

        self.function = type(self.custom._qualname, (torch.autograd.Function,), dict(
            forward=staticmethod(forward), backward=staticmethod(backward))).apply

    def __call__(self, *args):
        # traced (torch.compile, torch.export, AOT autograd, a user's dispatch mode): the op
        if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
            return self.custom(*args)
        if self.function is not None and torch.is_grad_enabled() and any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self.function(*args)
        return self.compute(*args)


def _op(schema):
    """Define the function as the op ``fastconv::<its name without the underscore>`` with
    ``schema`` (an :class:`_Op`)."""
    return functools.partial(_Op, schema=schema)


def _shape(t):
    return tuple(t.shape)


def _sized(position):
    """The fake of an op whose output is its first argument's kind of tensor with the size its
    argument at ``position`` names (a gradient of an operand of that size)."""
    return lambda first, *args: first.new_empty(args[position - 1])


def _sides(padding):
    """ops' ((top, bottom), (left, right)) from the ops' flat [top, bottom, left, right]."""
    return (padding[0], padding[1]), (padding[2], padding[3])


# --- convolution ---------------------------------------------------------------------------------

_CONV = "int[] stride, int[] padding, int[] dilation, int groups"


@_op(f"(Tensor input, Tensor weight, Tensor? bias, {_CONV}) -> Tensor")
def _conv2d(input, weight, bias, stride, padding, dilation, groups):
    return _tensor(ops.conv2d(_array(input), _array(weight), _array(bias), stride,
                              _sides(padding), dilation, groups))


@_op(f"(Tensor grad, Tensor weight, int[] input_size, {_CONV}) -> Tensor")
def _conv2d_backward_input(grad, weight, input_size, stride, padding, dilation, groups):
    return _tensor(ops.conv2d_backward_input(_array(grad), _array(weight), input_size, stride,
                                             _sides(padding), dilation, groups))


@_op(f"(Tensor grad, Tensor input, int[] weight_size, {_CONV}) -> Tensor")
def _conv2d_backward_weight(grad, input, weight_size, stride, padding, dilation, groups):
    return _tensor(ops.conv2d_backward_weight(_array(grad), _array(input), weight_size, stride,
                                              _sides(padding), dilation, groups))


@_conv2d.register_fake
def _(input, weight, bias, stride, padding, dilation, groups):
    g = geometry.conv_geometry(_shape(input), _shape(weight), stride, _sides(padding), dilation,
                               groups, "NCHW")
    return input.new_empty(g.y_shape)


_conv2d_backward_input.register_fake(_sized(2))
_conv2d_backward_weight.register_fake(_sized(2))


def _save_operands(ctx, inputs, output):
    """setup_context of an op (input, weight, bias, *arguments): keep the operands and the
    arguments for its backward."""
    input, weight, bias, *arguments = inputs
    ctx.save_for_backward(input, weight)
    ctx.arguments, ctx.has_bias = arguments, bias is not None


def _operand_gradients(backward_input, backward_weight):
    """The backward of an op (input, weight, bias, *arguments) from the custom ops of its two
    gradients; the bias's is the output gradient summed over all but the channels."""
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
        return (
            backward_input(grad, weight, _shape(input), *ctx.arguments) if need_input else None,
            backward_weight(grad, input, _shape(weight), *ctx.arguments) if need_weight else None,
            grad.sum((0, 2, 3)) if ctx.has_bias and need_bias else None,
            *[None] * len(ctx.arguments))
    return backward


_conv2d.register_autograd(_operand_gradients(_conv2d_backward_input, _conv2d_backward_weight),
                          setup_context=_save_operands)


_TRANSPOSE = "int[] stride, int[] padding, int[] output_padding, int groups, int[] dilation"


@_op(f"(Tensor input, Tensor weight, Tensor? bias, {_TRANSPOSE}) -> Tensor")
def _conv_transpose2d(input, weight, bias, *transpose):
    return _tensor(ops.conv_transpose2d(_array(input), _array(weight), _array(bias), *transpose))


@_op(f"(Tensor grad, Tensor weight, int[] input_size, {_TRANSPOSE}) -> Tensor")
def _conv_transpose2d_backward_input(grad, weight, input_size, *transpose):
    return _tensor(ops.conv_transpose2d_backward_input(_array(grad), _array(weight), input_size,
                                                       *transpose))


@_op(f"(Tensor grad, Tensor input, int[] weight_size, {_TRANSPOSE}) -> Tensor")
def _conv_transpose2d_backward_weight(grad, input, weight_size, *transpose):
    return _tensor(ops.conv_transpose2d_backward_weight(_array(grad), _array(input), weight_size,
                                                        *transpose))


@_conv_transpose2d.register_fake
def _(input, weight, bias, stride, padding, output_padding, groups, dilation):
    t = geometry.conv_transpose_geometry(_shape(input), _shape(weight), stride, padding,
                                         output_padding, dilation, groups, "NCHW")
    return input.new_empty(t.y_shape)


_conv_transpose2d_backward_input.register_fake(_sized(2))
_conv_transpose2d_backward_weight.register_fake(_sized(2))
_conv_transpose2d.register_autograd(
    _operand_gradients(_conv_transpose2d_backward_input, _conv_transpose2d_backward_weight),
    setup_context=_save_operands)


# --- pooling -------------------------------------------------------------------------------------

_MAX = "int[] kernel_size, int[] stride, int[] padding, int[] dilation, bool ceil_mode"
_AVG = ("int[] kernel_size, int[] stride, int[] padding, bool ceil_mode, bool count_include_pad, "
        "int? divisor_override")


def _max_window(kernel_size, stride, padding, dilation, ceil_mode):
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                ceil_mode=ceil_mode)


def _avg_window(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                count_include_pad=count_include_pad, divisor_override=divisor_override)


@_op(f"(Tensor input, {_MAX}) -> (Tensor, Tensor)")
def _max_pool2d(input, *window):
    y, indices = ops.max_pool2d(_array(input), **_max_window(*window), return_indices=True)
    return _tensor(y), _tensor(indices)


@_op(f"(Tensor grad, Tensor indices, int[] input_size, {_MAX}) -> Tensor")
def _max_pool2d_backward(grad, indices, input_size, *window):
    return _tensor(ops.max_pool2d_backward_saved(_array(grad), _array(indices), input_size,
                                                 **_max_window(*window)))


@_max_pool2d.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    p = geometry.pool_geometry(_shape(input), kernel_size, stride, padding, ceil_mode, True,
                               "NCHW", dilation)
    return input.new_empty(p.y_shape), input.new_empty(p.y_shape, dtype=torch.int64)


_max_pool2d_backward.register_fake(_sized(2))


def _save_window(ctx, inputs, output):
    """setup_context of a pooling (input, *window): keep the input's shape and the window."""
    input, *window = inputs
    ctx.shape, ctx.window = _shape(input), window


def _save_indices(ctx, inputs, output):
    _save_window(ctx, inputs, output)
    ctx.save_for_backward(output[1])


def _max_pool2d_gradient(ctx, grad, _):
    (indices,) = ctx.saved_tensors
    return (_max_pool2d_backward(grad, indices, ctx.shape, *ctx.window), *[None] * 5)


_max_pool2d.register_autograd(_max_pool2d_gradient, setup_context=_save_indices)


@_op(f"(Tensor input, {_AVG}) -> Tensor")
def _avg_pool2d(input, *window):
    return _tensor(ops.avg_pool2d(_array(input), **_avg_window(*window)))


@_op(f"(Tensor grad, int[] input_size, {_AVG}) -> Tensor")
def _avg_pool2d_backward(grad, input_size, *window):
    return _tensor(ops.avg_pool2d_backward(_array(grad), input_size, **_avg_window(*window)))


@_avg_pool2d.register_fake
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    p = geometry.pool_geometry(_shape(input), kernel_size, stride, padding, ceil_mode,
                               count_include_pad, "NCHW", 1, divisor_override)
    return input.new_empty(p.y_shape)


_avg_pool2d_backward.register_fake(_sized(1))


_avg_pool2d.register_autograd(
    lambda ctx, grad: (_avg_pool2d_backward(grad, ctx.shape, *ctx.window), *[None] * 6),
    setup_context=_save_window)


@_op("(Tensor input, int[] output_size) -> Tensor")
def _adaptive_avg_pool2d(input, output_size):
    return _tensor(ops.adaptive_avg_pool2d(_array(input), output_size))


@_op("(Tensor grad, int[] input_size) -> Tensor")
def _adaptive_avg_pool2d_backward(grad, input_size):
    return _tensor(ops.adaptive_avg_pool2d_backward(_array(grad), input_size))


_adaptive_avg_pool2d.register_fake(
    lambda input, output_size: input.new_empty((*input.shape[:2], *output_size)))
_adaptive_avg_pool2d_backward.register_fake(_sized(1))
_adaptive_avg_pool2d.register_autograd(
    lambda ctx, grad: (_adaptive_avg_pool2d_backward(grad, ctx.shape), None),
    setup_context=_save_window)


# --- batch normalisation -------------------------------------------------------------------------

@_op("(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, Tensor? running_var, "
     "bool training, float momentum, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
def _batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """y, the mean and invstd the backward takes and, in training with running buffers, their
    new values (else empty): a functional op (autograd formulas are for those), so the caller
    copies them into the buffers, as PyTorch's own functional batch norm does."""
    moving = training and running_mean is not None
    buffers = [b.clone() if moving else b for b in (running_mean, running_var)]
    y, mean, invstd = ops.batch_norm2d(_array(input), _array(weight), _array(bias),
                                       *map(_array, buffers), training, momentum, eps)
    moved = buffers if moving else [input.new_empty(0), input.new_empty(0)]
    return _tensor(y), _tensor(mean), _tensor(invstd), *moved


@_op("(Tensor grad, Tensor input, Tensor? weight, Tensor save_mean, Tensor save_invstd, "
     "bool training) -> (Tensor, Tensor, Tensor)")
def _batch_norm_backward(grad, input, weight, save_mean, save_invstd, training):
    return tuple(_tensor(a) for a in ops.batch_norm2d_backward(
        _array(grad), _array(input), _array(weight), _array(save_mean), _array(save_invstd),
        training))


@_batch_norm.register_fake
def _(input, weight, bias, running_mean, running_var, training, momentum, eps):
    moved = input.shape[1] if training and running_mean is not None else 0
    return (input.new_empty(input.shape), *(input.new_empty(input.shape[1]) for _ in range(2)),
            *(input.new_empty(moved) for _ in range(2)))


@_batch_norm_backward.register_fake
def _(grad, input, weight, save_mean, save_invstd, training):
    return grad.new_empty(input.shape), grad.new_empty(input.shape[1]), grad.new_empty(
        input.shape[1])


def _save_statistics(ctx, inputs, output):
    input, weight, bias, _, _, training, _, _ = inputs
    ctx.save_for_backward(input, weight, *output[1:3])
    ctx.training, ctx.affine = training, (weight is not None, bias is not None)


def _batch_norm_gradient(ctx, grad, *_):
    input, weight, mean, invstd = ctx.saved_tensors
    gx, gweight, gbias = _batch_norm_backward(grad, input, weight, mean, invstd, ctx.training)
    with_weight, with_bias = ctx.affine
    return (gx, gweight if with_weight else None, gbias if with_bias else None, *[None] * 5)


_batch_norm.register_autograd(_batch_norm_gradient, setup_context=_save_statistics)


# --- torch.nn.functional's functions -----------------------------------------------------------

def _batched(input, name):
    """(input as (N, C, H, W), whether it was): torch.nn.functional's unbatched (C, H, W) input
    gains a batch axis of 1."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"{name} takes 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape "
                         f"{_shape(input)}")
    return (input, True) if input.dim() == 4 else (input.unsqueeze(0), False)


def _unbatch(y, batched):
    return y if batched else y.squeeze(0)


def _size(value):
    """PyTorch's sizes as fastconv's: a one-element sequence stands for both axes."""
    return value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value


def _window(kernel_size, stride, padding, dilation=1):
    """A pooling's sizes as fastconv's; an empty stride, like None, is the kernel's."""
    stride = None if isinstance(stride, (tuple, list)) and not stride else stride
    return _size(kernel_size), _size(stride), _size(padding), _size(dilation)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d on fastconv's kernels ("same"/"valid" padding too, with
    TensorFlow's rule where PyTorch refuses a stride, and ((top, bottom), (left, right)))."""
    x, batched = _batched(input, "conv2d")
    g = geometry.conv_geometry(_shape(x), _shape(weight), _size(stride), _size(padding),
                               _size(dilation), groups, "NCHW")
    y = _conv2d(x, weight, bias, g.stride, g.padding, g.dilation, g.groups)
    return _unbatch(y, batched)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """torch.nn.functional.conv_transpose2d on fastconv's kernels."""
    x, batched = _batched(input, "conv_transpose2d")
    stride, padding, output_padding, dilation = map(_size, (stride, padding, output_padding,
                                                            dilation))
    t = geometry.conv_transpose_geometry(_shape(x), _shape(weight), stride, padding,
                                         output_padding, dilation, groups, "NCHW")
    y = _conv_transpose2d(x, weight, bias, t.conv.stride, geometry.pair(padding, "padding", 0),
                          geometry.pair(output_padding, "output_padding", 0), groups,
                          t.conv.dilation)
    return _unbatch(y, batched)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """torch.nn.functional.max_pool2d on fastconv's kernels; with ``return_indices`` also
    PyTorch's indices (``h * W + w`` within each plane)."""
    x, batched = _batched(input, "max_pool2d")
    kernel_size, stride, padding, dilation = _window(kernel_size, stride, padding, dilation)
    p = geometry.pool_geometry(_shape(x), kernel_size, stride, padding, ceil_mode, True, "NCHW",
                               dilation)
    top, _, left, _ = p.padding
    y, indices = _max_pool2d(x, p.kernel, p.stride, (top, left), p.dilation, bool(ceil_mode))
    y, indices = _unbatch(y, batched), _unbatch(indices, batched)
    return (y, indices) if return_indices else y


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """torch.nn.functional.avg_pool2d on fastconv's kernels."""
    x, batched = _batched(input, "avg_pool2d")
    kernel_size, stride, padding, _ = _window(kernel_size, stride, padding)
    p = geometry.pool_geometry(_shape(x), kernel_size, stride, padding, ceil_mode,
                               count_include_pad, "NCHW", 1, divisor_override)
    top, _, left, _ = p.padding
    y = _avg_pool2d(x, p.kernel, p.stride, (top, left), bool(ceil_mode), p.count_padding,
                    divisor_override)
    return _unbatch(y, batched)


def adaptive_avg_pool2d(input, output_size):
    """torch.nn.functional.adaptive_avg_pool2d on fastconv's kernels."""
    x, batched = _batched(input, "adaptive_avg_pool2d")
    p = geometry.adaptive_pool_geometry(_shape(x), _size(output_size), "NCHW")
    return _unbatch(_adaptive_avg_pool2d(x, (p.OH, p.OW)), batched)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm on fastconv's kernels: input (N, C, ...) normalised per
    channel C, the running buffers, when given, updated in place in training. fastconv's
    momentum lies in [0, 1] (PyTorch takes any number)."""
    if not isinstance(input, torch.Tensor) or input.dim() < 2:
        raise ValueError(f"batch_norm takes input (N, C, ...) of 2 or more axes, got "
                         f"{_shape(input) if isinstance(input, torch.Tensor) else input!r}")
    planes = input if input.dim() == 4 else input.reshape(*input.shape[:2], -1, 1)
    y, _, _, mean, var = _batch_norm(planes, weight, bias, running_mean, running_var,
                                     bool(training), float(momentum), float(eps))
    if training and running_mean is not None:
        with torch.no_grad():
            running_mean.copy_(mean)
            running_var.copy_(var)
    return y.reshape(input.shape)


# --- modules and convert ------------------------------------------------------------------------

class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d whose forward runs fastconv's kernels; parameters, state_dict, hooks and
    optimisers are torch's own (as for every module here)."""

    def forward(self, input):
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups)


class ConvTranspose2d(nn.ConvTranspose2d):
    def forward(self, input, output_size=None):
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation)


class MaxPool2d(nn.MaxPool2d):
    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode, self.return_indices)


class AvgPool2d(nn.AvgPool2d):
    def forward(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    def forward(self, input):
        return adaptive_avg_pool2d(input, self.output_size)


class BatchNorm2d(nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on fastconv's kernels: its forward's rules (num_batches_tracked,
    momentum None as a cumulative average, batch statistics in eval without running
    buffers)."""

    def forward(self, input):
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if keep else None,
                          self.running_var if keep else None, self.weight, self.bias,
                          use_batch, momentum, self.eps)


def _unsupported(layer):
    """Why fastconv cannot run ``layer``, or None."""
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r}"
    return None


_SWAPS = {nn.Conv2d: Conv2d, nn.ConvTranspose2d: ConvTranspose2d, nn.MaxPool2d: MaxPool2d,
          nn.AvgPool2d: AvgPool2d, nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
          nn.BatchNorm2d: BatchNorm2d}
# The kinds of layer fastconv has kernels for in some form: one convert() leaves, it names.
_KINDS = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd,
          nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
          nn.modules.batchnorm._NormBase)


def convert(model, inplace=False):
    """Swap every nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d and nn.BatchNorm2d of ``model`` for fastconv's, keeping the same
    parameters and buffers (shared, not copied). Convolution, pooling and normalisation layers
    it leaves to PyTorch (other dimensions or kinds, or a padding_mode other than zeros) are
    named in a warning."""
    model = model if inplace else copy.deepcopy(model)
    kept = []
    for name, layer in list(model.named_modules()):
        swap = _SWAPS.get(type(layer))
        reason = _unsupported(layer) if swap else "no fastconv kernel"
        if reason is None:
            layer.__class__ = swap  # same parameters, buffers and hooks; only forward changes
        elif isinstance(layer, _KINDS) and type(layer) not in _SWAPS.values():
            kept.append(f"{name or type(layer).__name__} ({type(layer).__name__}: {reason})")
    if kept:
        warnings.warn("fastconv.torch.convert left these layers to PyTorch: " + ", ".join(kept),
                      stacklevel=2)
    return model
