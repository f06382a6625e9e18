"""Differentiable functions on Tensors: the conv and pooling ops of fastconv.ops with their
backward ops as the chain rule, and the layers and losses a CNN needs around them."""

import numpy as np

from .. import device as devices
from .. import ops
from ..tensor import Tensor


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           activation=None, data_format="NCHW"):
    """``activation(conv2d(input, weight) + bias)`` in one fused kernel; see fastconv.ops.conv2d
    for the arguments. Backward computes only the gradients its inputs need
    (fastconv.ops.conv2d_backward)."""
    return _convolution(ops.conv2d, ops.conv2d_backward, "conv2d", input, weight, bias,
                        activation, stride=stride, padding=padding, dilation=dilation,
                        groups=groups, data_format=data_format)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, activation=None, data_format="NCHW"):
    """PyTorch's F.conv_transpose2d (fastconv.ops.conv_transpose2d), ``activation`` fused;
    the backward computes only the gradients its inputs need."""
    return _convolution(ops.conv_transpose2d, ops.conv_transpose2d_backward, "conv_transpose2d",
                        input, weight, bias, activation, stride=stride, padding=padding,
                        output_padding=output_padding, groups=groups, dilation=dilation,
                        data_format=data_format)


def _convolution(forward, gradients, name, input, weight, bias, activation, **geometry):
    """The graph node of a convolution op ``forward`` with its fused activation, whose
    backward asks ``gradients`` for those of (input, weight, bias) that need one, the
    activation's slope taken from the output."""
    geometry["device"] = input.device
    y = forward(input.data, weight.data, None if bias is None else bias.data,
                activation=activation, **geometry)
    parents = (input, weight) if bias is None else (input, weight, bias)

    def backward(g):
        needs = (input.requires_grad, weight.requires_grad,
                 bias is not None and bias.requires_grad)
        return gradients(g, input.data, weight.data, needs, activation=activation, y=y,
                         **geometry)[:len(parents)]

    return Tensor._result(y, parents, backward, name)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, data_format="NCHW"):
    """Max pooling (fastconv.ops.max_pool2d); with ``return_indices`` also PyTorch's indices
    (``h * W + w`` within each plane), an int64 Tensor outside the graph, which
    ``fastconv.ops.max_pool2d_backward(..., indices=)`` takes."""
    window = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                  ceil_mode=ceil_mode, data_format=data_format, device=input.device)
    y, indices = ops.max_pool2d(input.data, **window, return_indices=True)
    shape = input.data.shape  # the backward scatters through the indices: x is not kept
    out = Tensor._result(y, (input,),
                         lambda g: (ops.max_pool2d_backward_saved(g, indices, shape, **window),),
                         "max_pool2d")
    return (out, Tensor(indices, device=input.device)) if return_indices else out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, data_format="NCHW"):
    window = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad, divisor_override=divisor_override,
                  data_format=data_format, device=input.device)
    y = ops.avg_pool2d(input.data, **window)
    return Tensor._result(y, (input,),
                          lambda g: (ops.avg_pool2d_backward(g, input.shape, **window),),
                          "avg_pool2d")


def adaptive_avg_pool2d(input, output_size, data_format="NCHW"):
    """Adaptive average pooling (fastconv.ops.adaptive_avg_pool2d); output_size 1 is global
    average pooling."""
    y = ops.adaptive_avg_pool2d(input.data, output_size, data_format, device=input.device)
    shape = input.shape
    return Tensor._result(y, (input,), lambda g: (ops.adaptive_avg_pool2d_backward(
        g, shape, data_format, device=input.device),), "adaptive_avg_pool2d")


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, activation=None, data_format="NCHW", residual=None):
    """PyTorch's F.batch_norm on a 4-D input (fastconv.ops.batch_norm2d): the running buffers
    (Tensors, or None) are updated in place in training, weight and bias are optional;
    ``activation`` (as conv2d's) runs in the same kernel, and its slope in the backward's;
    ``residual`` (a Tensor of input's shape) is added before the activation, in the same
    kernels: a residual block's ``relu(bn(x) + shortcut)``."""
    def data(t):
        return None if t is None else t.data
    x = input.data
    y, mean, invstd = ops.batch_norm2d(x, data(weight), data(bias), data(running_mean),
                                       data(running_var), training, momentum, eps, activation,
                                       data_format=data_format, device=input.device,
                                       residual=data(residual))
    others = [t for t in (weight, bias, residual) if t is not None]

    def backward(g):
        gx, gweight, gbias, *gresidual = ops.batch_norm2d_backward(
            g, x, data(weight), mean, invstd, training, y if activation else None, activation,
            data_format=data_format, device=input.device, residual=residual is not None)
        return (gx, *(grad for t, grad in ((weight, gweight), (bias, gbias)) if t is not None),
                *gresidual)

    return Tensor._result(y, (input, *others), backward, "batch_norm")


def dropout(input, p=0.5, training=True):
    """Inverted dropout (fastconv.ops.dropout) in training, ``input`` itself in evaluation or
    for p = 0; the mask is drawn from fastconv's generator (``fastconv.manual_seed``)."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability p must lie in [0, 1], got {p!r}")
    if not training or p == 0:
        return input
    y, mask = ops.dropout(input.data, p, device=input.device)
    return Tensor._result(y, (input,),
                          lambda g: (ops.dropout_backward(g, mask, p, device=input.device),),
                          "dropout")


def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` with PyTorch's (out_features, in_features) weight."""
    out = input @ weight.T
    return out if bias is None else out + bias


def relu(input):
    return input.relu()


def tanh(input):
    return input.tanh()


def sigmoid(input):
    return input.sigmoid()


def flatten(input, start_dim=1):
    return input.flatten(start_dim)


def log_softmax(input, dim=-1):
    return input.log_softmax(dim)


def cross_entropy(input, target):
    """Mean negative log-likelihood of integer class ``target`` (N,) (a Tensor, an array or a
    list) under logits ``input`` (N, classes): one graph node, whose forward computes the loss
    and its gradient in one kernel (fastconv.ops.softmax_cross_entropy) and whose backward
    scales that gradient."""
    labels = target.data if isinstance(target, Tensor) else target
    if devices.where(labels) is None:
        labels = np.asarray(labels)
    elif devices.where(labels) == "cuda":  # host labels are checked on the host, then copied
        labels = devices.to_device(labels, input.device)
    loss, grad = ops.softmax_cross_entropy(input.data, labels, device=input.device)
    return Tensor._result(loss, (input,), lambda g: (grad * g.astype(grad.dtype, copy=False),),
                          "cross_entropy")


def mse_loss(input, target):
    """Mean squared error of ``input`` against a ``target`` of the same shape. Where the shapes
    differ PyTorch warns and broadcasts ((N, 1) against (N,) gives N x N differences), almost
    always a bug: fastconv refuses."""
    if tuple(input.shape) != tuple(getattr(target, "shape", ())):
        raise ValueError(f"target {tuple(getattr(target, 'shape', ()))} must have input's shape "
                         f"{tuple(input.shape)}")
    diff = input - target
    return (diff * diff).mean()
