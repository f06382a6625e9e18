"""Modules: parameters and their PyTorch-default initialisation in the constructor, a one-line
call into nn.functional. Module keeps the bookkeeping, with PyTorch's names and order: named
parameters, buffers and submodules, state_dict, modes, devices."""

import math

import numpy as np

from .. import device as devices
from .. import rng
from ..rng import manual_seed  # noqa: F401  (fastconv.nn.manual_seed, as before)
from ..tensor import Tensor
from . import functional as F


class Parameter(Tensor):
    """A Tensor that a Module registers as a learnable parameter."""

    def __init__(self, data):
        super().__init__(np.asarray(data), requires_grad=True)


def _uniform(shape, bound):
    return Parameter(rng.generator().uniform(-bound, bound, shape).astype(np.float32))


def _is_parameter(module, name, value):
    return isinstance(value, Parameter)


def _is_buffer(module, name, value):
    return name in module._buffers and value is not None


class Module:
    """A layer or a network of them. Attributes that are Parameters, Modules or registered
    buffers are found by walking the instance's attributes in definition order."""

    training = True
    _buffers = frozenset()  # names of this module's buffers (register_buffer)
    _non_persistent = frozenset()  # those of them state_dict leaves out

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def register_buffer(self, name, tensor, persistent=True):
        """Keep ``tensor`` (a Tensor or an array, or None for a slot left empty) as state that is
        not learned (batch norm's running statistics): in ``state_dict`` unless not
        ``persistent``, moved by ``to``, never given to an optimiser."""
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(np.asarray(tensor))
        self._buffers = self._buffers | {name}
        if not persistent:
            self._non_persistent = self._non_persistent | {name}
        setattr(self, name, tensor)

    # --- the tree ----------------------------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return (module for _, module in self.named_children())

    def named_modules(self, prefix=""):
        """(dotted name, module) of this module ("") and every submodule, parents first, each
        once however often it is reachable."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            stack.extend(reversed([(f"{name}.{child}" if name else child, m)
                                   for child, m in module.named_children()]))

    def modules(self):
        return (module for _, module in self.named_modules())

    def _named(self, found, prefix=""):
        """(dotted name, value) of every module's own attributes ``found(module, name, value)``
        picks, module by module (parents first), each in definition order."""
        for path, module in self.named_modules():
            for name, value in vars(module).items():
                if found(module, name, value):
                    yield f"{prefix}{path}.{name}" if path else prefix + name, value

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) pairs, each module's own before its submodules', as PyTorch
        names and orders them."""
        return self._named(_is_parameter, prefix)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        return self._named(_is_buffer, prefix)

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def _state(self):
        """(dotted name, Tensor) of what ``state_dict`` holds: parameters and persistent
        buffers, in one walk (PyTorch's order up to where a module defines a buffer before a
        parameter)."""
        return self._named(lambda module, name, value: _is_parameter(module, name, value) or (
            _is_buffer(module, name, value) and name not in module._non_persistent))

    # --- modes, devices and state ------------------------------------------------------------
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
        """Move every parameter (and its gradient) and buffer to ``device``, in place, as
        PyTorch does."""
        device = devices.parse(device)
        for t in [*self.parameters(), *self.buffers()]:
            t.data, t.device = devices.to_device(t.data, device), device
            if t.grad is not None:
                t.grad = t.grad.to(device)
        return self

    def state_dict(self):
        """{dotted name: a copy of the parameter or buffer as a NumPy array}."""
        return {name: t.numpy() for name, t in self._state()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters and buffers; shapes must match, and with ``strict``
        so must the names (a missing or unexpected entry is a KeyError naming it)."""
        own = dict(self._state())
        if strict:
            missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
            if missing or unexpected:
                raise KeyError(f"state_dict mismatch: missing {sorted(missing)}, "
                               f"unexpected {sorted(unexpected)}")
        for name, value in state.items():
            if name not in own:
                continue
            value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            if value.shape != own[name].shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, the model's "
                                 f"{own[name].shape}")
            own[name].data[...] = devices.to_device(value, own[name].device)
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


class ConvTranspose2d(Module):
    """PyTorch's ConvTranspose2d: weight (in_channels, out_channels/groups, kh, kw), its default
    init U(+-1/sqrt(fan_in)) for weight and bias with PyTorch's fan_in, out_channels/groups *
    kh * kw (the weight's second axis)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        bound = 1 / math.sqrt(out_channels // groups * kh * kw)
        self.weight = _uniform((in_channels, out_channels // groups, kh, kw), bound)
        self.bias = _uniform((out_channels,), bound) if bias else None
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.groups, self.dilation = groups, dilation

    def forward(self, x, activation=None):
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation, activation)


class Linear(Module):
    """PyTorch's Linear ((out, in) weight) with its default init, U(+-1/sqrt(in_features))."""

    def __init__(self, in_features, out_features, bias=True):
        bound = 1 / math.sqrt(in_features)
        self.weight = _uniform((out_features, in_features), bound)
        self.bias = _uniform((out_features,), bound) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class MaxPool2d(Module):
    """PyTorch's MaxPool2d; with ``return_indices`` it returns (output, indices)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class BatchNorm2d(Module):
    """PyTorch's BatchNorm2d: weight ones and bias zeros (with ``affine``), buffers
    running_mean, running_var and num_batches_tracked (with ``track_running_stats``). In
    training it normalises with the batch's statistics and moves the running ones ``momentum``
    of the way to them (``momentum=None``: a cumulative average over the batches seen); in
    evaluation it normalises with the running ones. Without them it always uses the batch's.
    In evaluation it folds into the convolution before it: :func:`fuse_conv_bn_eval`."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        if isinstance(num_features, bool) or not isinstance(num_features, int) or (
                num_features < 1):
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine else None
        for name, initial in (("running_mean", np.zeros(num_features, np.float32)),
                              ("running_var", np.ones(num_features, np.float32)),
                              ("num_batches_tracked", np.array(0, np.int64))):
            self.register_buffer(name, initial if track_running_stats else None)

    def forward(self, x, activation=None, residual=None):
        """The normalisation, then ``activation`` in the same kernel (as Conv2d's), with
        ``residual`` added before it (a residual block's shortcut)."""
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d expects a 4-D input (N, C, H, W), got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}) got input {x.shape} with "
                             f"{x.shape[1]} channels (num_features must match)")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:
                momentum = 1 / self.num_batches_tracked.item()
        use_batch = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if keep else None,
                            self.running_var if keep else None, self.weight, self.bias,
                            use_batch, momentum, self.eps, activation, residual=residual)


class Dropout(Module):
    """PyTorch's Dropout: in training each element is zeroed with probability ``p`` and the
    others scaled by 1 / (1 - p); the identity in evaluation."""

    def __init__(self, p=0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability p must lie in [0, 1], got {p!r}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


def fuse_conv_bn_eval(conv, bn):
    """A new Conv2d computing ``bn(conv(x))`` for a BatchNorm2d in evaluation: the running
    statistics and the affine map folded into the filters and bias, one kernel where there
    were two (as ``torch.nn.utils.fusion.fuse_conv_bn_eval``)."""
    if conv.training or bn.training:
        raise ValueError("fuse_conv_bn_eval folds modules in evaluation mode: call .eval() "
                         "first (in training the batch's statistics change every step)")
    if bn.running_mean is None:
        raise ValueError("fuse_conv_bn_eval needs bn's running statistics "
                         "(track_running_stats=True)")
    xp = conv.weight.xp
    scale = 1 / xp.sqrt(bn.running_var.data.astype(np.float64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.data
    bias = 0 if conv.bias is None else conv.bias.data.astype(np.float64)
    shift = (bias - bn.running_mean.data) * scale + (0 if bn.bias is None else bn.bias.data)
    fused = Conv2d.__new__(Conv2d)
    vars(fused).update(vars(conv))
    dtype = conv.weight.dtype
    fused.weight = Parameter((conv.weight.data * scale[:, None, None, None]).astype(dtype))
    fused.bias = Parameter(shift.astype(dtype))
    return fused.to(conv.weight.device)


class AdaptiveAvgPool2d(Module):
    """PyTorch's AdaptiveAvgPool2d: an int or a pair (None keeps that axis); 1 is global
    average pooling."""

    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)


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


class ModuleList(Module):
    """Modules held in a list, registered as "0", "1", ... (PyTorch's ModuleList)."""

    def __init__(self, modules=()):
        self._modules = []
        self.extend(modules)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        self._modules.append(module)
        return self

    def extend(self, modules):
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, index):
        return self._modules[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)


class Sequential(ModuleList):
    """Layers applied in order, named "0", "1", ... A Conv2d, ConvTranspose2d or BatchNorm2d
    directly followed by ReLU, Tanh or Sigmoid runs as one fused kernel."""

    def __init__(self, *layers):
        super().__init__(layers)

    def forward(self, x):
        layers = list(self)
        while layers:
            layer = layers.pop(0)
            if (isinstance(layer, (Conv2d, ConvTranspose2d, BatchNorm2d)) and layers
                    and type(layers[0]) in ACTIVATIONS.values()):
                x = layer(x, activation=layers.pop(0).name)
            else:
                x = layer(x)
        return x
