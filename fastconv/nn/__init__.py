"""Neural-network layers on fastconv's Tensor, named and initialised as PyTorch's."""

from . import functional
from .modules import (
                      AdaptiveAvgPool2d,
                      AvgPool2d,
                      BatchNorm2d,
                      Conv2d,
                      ConvTranspose2d,
                      Dropout,
                      Flatten,
                      Linear,
                      MaxPool2d,
                      Module,
                      ModuleList,
                      Parameter,
                      ReLU,
                      Sequential,
                      Sigmoid,
                      Tanh,
                      fuse_conv_bn_eval,
                      manual_seed,
)

__all__ = ["functional", "Module", "Parameter", "Conv2d", "ConvTranspose2d", "Linear",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm2d", "Dropout", "ReLU",
           "Tanh", "Sigmoid", "Flatten", "Sequential", "ModuleList", "fuse_conv_bn_eval",
           "manual_seed"]
