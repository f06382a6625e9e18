"""Reference networks built from fastconv.nn: LeNet-5 and the CIFAR-style ResNet."""

import math

from . import nn, rng
from .nn import functional as F


class LeNet5(nn.Module):
    """LeNet-5 on 1x32x32 inputs (LeCun et al., 1998), layer names as in the paper:

    c1 Conv2d(1, 6, 5) -> activation -> pool 2 -> c3 Conv2d(6, 16, 5) -> activation -> pool 2
    -> c5 Conv2d(16, 120, 5) -> activation -> flatten -> f6 Linear(120, 84) -> activation ->
    output Linear(84, num_classes). Each conv's activation runs fused in its kernel.
    ``activation="tanh", pool="avg"`` is the 1998 network; the default is ReLU and max pooling.
    """

    def __init__(self, num_classes=10, activation="relu", pool="max"):
        if activation not in ("relu", "tanh", "sigmoid"):
            raise ValueError(f"activation must be 'relu', 'tanh' or 'sigmoid', got {activation!r}")
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
        self.c1 = nn.Conv2d(1, 6, 5)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)
        self.activation = activation
        self.pool = F.max_pool2d if pool == "max" else F.avg_pool2d

    def forward(self, x):
        act = self.activation
        x = self.pool(self.c1(x, activation=act), 2)
        x = self.pool(self.c3(x, activation=act), 2)
        x = F.flatten(self.c5(x, activation=act))
        x = getattr(F, act)(self.f6(x))
        return self.output(x)


def _kaiming_normal(conv):
    """torchvision's ResNet initialisation of a conv's weight: N(0, 2 / fan_out), for ReLU."""
    k, _, r, s = conv.weight.shape
    std = math.sqrt(2 / (k * r * s))
    conv.weight.data[...] = rng.generator().standard_normal(conv.weight.shape) * std
    return conv


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm, ReLU between and after the shortcut's sum: the identity,
    or where the shape changes a 1x1 conv + batch norm projection (``downsample``, the paper's
    option B)."""

    def __init__(self, in_channels, out_channels, stride=1):
        self.conv1 = _kaiming_normal(nn.Conv2d(in_channels, out_channels, 3, stride, 1,
                                               bias=False))
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _kaiming_normal(nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False))
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                _kaiming_normal(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.bn1(self.conv1(x), activation="relu")  # one kernel for both
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.bn2(self.conv2(out), activation="relu", residual=shortcut)  # one kernel


class ResNet(nn.Module):
    """The CIFAR-style ResNet of He et al. (2016), depth 6n + 2 (8, 14, 20, 32, 44, 56...): a
    3x3 stem conv + batch norm + ReLU, three stages of n basic blocks of ``width``, 2x and 4x
    ``width`` channels (the first block of stages 2 and 3 at stride 2), global average
    pooling and a linear head. Names as torchvision's ResNet (conv1, bn1, layer1..layer3 of
    blocks, fc), so the same network in PyTorch loads its state_dict strictly, both ways; its
    initialisation too (convs N(0, 2 / fan_out), batch norms 1 and 0, the head PyTorch's
    Linear default)."""

    def __init__(self, depth=20, num_classes=10, in_channels=1, width=16):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (
                depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 for n >= 1 (8, 14, 20, 32, ...), got "
                             f"{depth!r}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        blocks = (depth - 2) // 6
        self.conv1 = _kaiming_normal(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(width)
        channels = width
        for stage, out in enumerate((width, 2 * width, 4 * width), 1):
            layer = []
            for i in range(blocks):
                layer.append(BasicBlock(channels, out, 2 if stage > 1 and i == 0 else 1))
                channels = out
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.bn1(self.conv1(x), activation="relu")
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.flatten(F.adaptive_avg_pool2d(x, 1)))
