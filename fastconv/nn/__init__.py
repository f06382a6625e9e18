"""Neural-network layers on fastconv's Tensor, named and initialised as PyTorch's."""

from . import functional
from .modules import (
                      AvgPool2d,
                      Conv2d,
                      Flatten,
                      Linear,
                      MaxPool2d,
                      Module,
                      Parameter,
                      ReLU,
                      Sequential,
                      Sigmoid,
                      Tanh,
                      manual_seed,
)

__all__ = ["functional", "Module", "Parameter", "Conv2d", "Linear", "MaxPool2d", "AvgPool2d",
           "ReLU", "Tanh", "Sigmoid", "Flatten", "Sequential", "manual_seed"]
