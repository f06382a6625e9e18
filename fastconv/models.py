"""Reference networks built from fastconv.nn."""

from . import nn
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
