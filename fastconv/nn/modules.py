"""Modules: parameters and their PyTorch-default initialisation in the constructor, a one-line
call into nn.functional. Module keeps the bookkeeping: named parameters, state_dict, modes."""

import math

import numpy as np

from .. import device as devices
from ..tensor import Tensor
from . import functional as F

_generator = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator every layer initialises its parameters from."""
    global _generator
    _generator = np.random.default_rng(seed)


class Parameter(Tensor):
    """A Tensor that a Module registers as a learnable parameter."""

    def __init__(self, data):
        super().__init__(np.asarray(data), requires_grad=True)


def _uniform(shape, bound):
    return Parameter(_generator.uniform(-bound, bound, shape).astype(np.float32))


class Module:
    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) pairs in definition order, as PyTorch names them."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for value in vars(self).values():
            if isinstance(value, Module):
                yield from value.modules()

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move every parameter (and its gradient) to ``device``, in place, as PyTorch does."""
        device = devices.parse(device)
        for p in self.parameters():
            p.data, p.device = devices.to_device(p.data, device), device
            if p.grad is not None:
                p.grad = p.grad.to(device)
        return self

    def state_dict(self):
        """{dotted name: a copy of the parameter as a NumPy array}."""
        return {name: p.numpy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters; shapes must match, and with ``strict`` so must the
        names (a missing or unexpected entry is a KeyError naming it)."""
        params = dict(self.named_parameters())
        if strict:
            missing, unexpected = params.keys() - state.keys(), state.keys() - params.keys()
            if missing or unexpected:
                raise KeyError(f"state_dict mismatch: missing {sorted(missing)}, "
                               f"unexpected {sorted(unexpected)}")
        for name, value in state.items():
            if name not in params:
                continue
            value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            if value.shape != params[name].shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, the parameter "
                                 f"{params[name].shape}")
            params[name].data[...] = devices.to_device(value, params[name].device)
        return self


class Conv2d(Module):
    """PyTorch's Conv2d (OIHW weight) with its default init: U(+-1/sqrt(fan_in)) for weight and
    bias, which is kaiming_uniform_(a=sqrt(5))."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        bound = 1 / math.sqrt(in_channels // groups * kh * kw)
        self.weight = _uniform((out_channels, in_channels // groups, kh, kw), bound)
        self.bias = _uniform((out_channels,), bound) if bias else None
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x, activation=None):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups, activation=activation)


class Linear(Module):
    """PyTorch's Linear ((out, in) weight) with its default init, U(+-1/sqrt(in_features))."""

    def __init__(self, in_features, out_features, bias=True):
        bound = 1 / math.sqrt(in_features)
        self.weight = _uniform((out_features, in_features), bound)
        self.bias = _uniform((out_features,), bound) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)


class ReLU(Module):
    name = "relu"

    def forward(self, x):
        return F.relu(x)


class Tanh(Module):
    name = "tanh"

    def forward(self, x):
        return F.tanh(x)


class Sigmoid(Module):
    name = "sigmoid"

    def forward(self, x):
        return F.sigmoid(x)


class Flatten(Module):
    def __init__(self, start_dim=1):
        self.start_dim = start_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim)


ACTIVATIONS = {m.name: m for m in (ReLU, Tanh, Sigmoid)}


class Sequential(Module):
    """Layers applied in order, named "0", "1", ... A Conv2d directly followed by ReLU, Tanh or
    Sigmoid runs as one fused kernel."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)
        self.layers = layers

    def forward(self, x):
        layers = list(self.layers)
        while layers:
            layer = layers.pop(0)
            if isinstance(layer, Conv2d) and layers and type(layers[0]) in ACTIVATIONS.values():
                x = layer(x, activation=layers.pop(0).name)
            else:
                x = layer(x)
        return x
