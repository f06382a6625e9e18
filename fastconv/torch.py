"""fastconv's kernels under PyTorch: autograd Functions, drop-in modules and ``convert``.

CPU tensors cross as zero-copy NumPy views (``Tensor.numpy()`` of a detached, contiguous
tensor) and results come back through ``torch.from_numpy``; CUDA tensors cross as zero-copy
CuPy arrays through DLPack and come back the same way, the kernels queued on torch's current
stream. float32 and float64. The signatures are torch.nn.functional's.

Import this module (or fastconv) before torch: fastconv sets ``OMP_WAIT_POLICY=PASSIVE``, which
torch's OpenMP runtime reads only when torch is imported; otherwise its workers spin after each
torch op on the cores the next kernel needs (several times slower: benchmarks/results/
torch_adapter.md). Converted models train under DistributedDataParallel as they are
(examples/ddp_train.py).
"""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import torch
from torch import nn

from . import device, ops


def _array(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    t = t.detach().contiguous()
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        return device.cuda_backend().adopt(t)
    raise RuntimeError(f"{name} is on {t.device}: fastconv runs CPU and CUDA tensors")


def _tensor(array):
    return torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)


def _on_torch_stream(method):
    """Run a Function's forward(ctx, input, ...) or backward(ctx, grad) with fastconv's kernels
    queued on torch's current stream of the tensor's GPU, behind the work torch queued there."""
    @functools.wraps(method)
    def run(ctx, tensor, *args):
        if not (isinstance(tensor, torch.Tensor) and tensor.is_cuda):
            return method(ctx, tensor, *args)
        stream = torch.cuda.current_stream(tensor.device).cuda_stream
        with device.cuda_backend().use_stream(stream):
            return method(ctx, tensor, *args)
    return run


class _Conv2d(torch.autograd.Function):
    @staticmethod
    @_on_torch_stream
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups):
        x, w = _array(input, "input"), _array(weight, "weight")
        b = None if bias is None else _array(bias, "bias")
        geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        ctx.save_for_backward(input, weight)
        ctx.geometry, ctx.has_bias = geometry, bias is not None
        return _tensor(ops.conv2d(x, w, b, **geometry))

    @staticmethod
    @_on_torch_stream
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        needs = (*ctx.needs_input_grad[:2], ctx.has_bias and ctx.needs_input_grad[2])
        grads = ops.conv2d_backward(_array(grad, "grad"), _array(input, "input"),
                                    _array(weight, "weight"), needs, **ctx.geometry)
        return (*(None if g is None else _tensor(g) for g in grads), None, None, None, None)


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    @_on_torch_stream
    def forward(ctx, input, kernel_size, stride, padding, ceil_mode):
        window = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                      ceil_mode=ceil_mode)
        ctx.save_for_backward(input)
        ctx.window = window
        return _tensor(ops.max_pool2d(_array(input, "input"), **window))

    @staticmethod
    @_on_torch_stream
    def backward(ctx, grad):
        (input,) = ctx.saved_tensors
        return (_tensor(ops.max_pool2d_backward(_array(grad, "grad"), _array(input, "input"),
                                                **ctx.window)), None, None, None, None)


class _AvgPool2d(torch.autograd.Function):
    @staticmethod
    @_on_torch_stream
    def forward(ctx, input, kernel_size, stride, padding, ceil_mode, count_include_pad):
        window = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                      ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        ctx.shape, ctx.window = tuple(input.shape), window
        return _tensor(ops.avg_pool2d(_array(input, "input"), **window))

    @staticmethod
    @_on_torch_stream
    def backward(ctx, grad):
        return (_tensor(ops.avg_pool2d_backward(_array(grad, "grad"), ctx.shape, **ctx.window)),
                None, None, None, None, None)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d on fastconv's kernels ("same"/"valid" padding too, with
    TensorFlow's rule where PyTorch refuses a stride)."""
    return _Conv2d.apply(input, weight, bias, stride, padding, dilation, groups)


def max_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False):
    """torch.nn.functional.max_pool2d on fastconv's kernels (no dilation, no indices)."""
    return _MaxPool2d.apply(input, kernel_size, stride, padding, ceil_mode)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """torch.nn.functional.avg_pool2d on fastconv's kernels (no divisor_override)."""
    return _AvgPool2d.apply(input, kernel_size, stride, padding, ceil_mode, count_include_pad)


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d whose forward runs fastconv's kernels; parameters, state_dict, hooks and
    optimisers are torch's own."""

    def forward(self, input):
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups)


class MaxPool2d(nn.MaxPool2d):
    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode)


class AvgPool2d(nn.AvgPool2d):
    def forward(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad)


def _unsupported(layer):
    """Why fastconv cannot run ``layer``, or None."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r}"
    elif isinstance(layer, nn.MaxPool2d):
        if layer.dilation not in (1, (1, 1)) or layer.return_indices:
            return "dilation or return_indices"
    elif isinstance(layer, nn.AvgPool2d):
        if layer.divisor_override is not None:
            return "divisor_override"
    return None


_SWAPS = {nn.Conv2d: Conv2d, nn.MaxPool2d: MaxPool2d, nn.AvgPool2d: AvgPool2d}


def convert(model, inplace=False):
    """Swap every nn.Conv2d, nn.MaxPool2d and nn.AvgPool2d of ``model`` for fastconv's,
    keeping the same parameters (shared, not copied). Layers fastconv cannot run stay as
    they are, named in a warning."""
    model = model if inplace else copy.deepcopy(model)
    kept = []
    for name, layer in list(model.named_modules()):
        swap = _SWAPS.get(type(layer))
        if swap is None:
            continue
        reason = _unsupported(layer)
        if reason:
            kept.append(f"{name or type(layer).__name__} ({reason})")
            continue
        layer.__class__ = swap  # same parameters, buffers and hooks; only forward changes
    if kept:
        warnings.warn("fastconv.torch.convert left these layers to PyTorch: " + ", ".join(kept),
                      stacklevel=2)
    return model
