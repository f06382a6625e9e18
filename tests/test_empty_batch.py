"""A batch of none (N = 0), as the last shard of a data set can be: every op and its backward
returns PyTorch's result, empty outputs and zeros for the weight and bias gradients, on every
CPU algorithm; other empty axes stay clear errors."""

import numpy as np
import pytest
import torch

from fastconv import nn, ops, tensor
from fastconv.nn import functional as F

EMPTY = np.empty((0, 3, 8, 8), np.float32)


@pytest.mark.parametrize("algo", ops.algorithms("cpu"))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_convolution(algo, layout):
    x = EMPTY if layout == "NCHW" else EMPTY.transpose(0, 2, 3, 1).copy()
    w = np.ones((4, 3, 3, 3) if layout == "NCHW" else (3, 3, 3, 4), np.float32)
    y = ops.conv2d(x, w, np.ones(4, np.float32), stride=2, padding=1, data_format=layout,
                   algo=algo)
    assert y.shape == ((0, 4, 4, 4) if layout == "NCHW" else (0, 4, 4, 4)) and y.dtype == x.dtype
    gx, gw, gb = ops.conv2d_backward(y, x, w, stride=2, padding=1, data_format=layout,
                                     algo=algo)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (4,)
    assert not gw.any() and not gb.any()


def test_pooling():
    y, indices = ops.max_pool2d(EMPTY, 2, return_indices=True)
    assert y.shape == indices.shape == (0, 3, 4, 4) and indices.dtype == np.int64
    assert ops.max_pool2d_backward(y, EMPTY, 2).shape == EMPTY.shape
    assert ops.max_pool2d_backward(y, EMPTY.shape, 2, indices=indices).shape == EMPTY.shape
    assert ops.avg_pool2d_backward(ops.avg_pool2d(EMPTY, 3, 1, 1), EMPTY.shape, 3, 1,
                                   1).shape == EMPTY.shape
    g = ops.adaptive_avg_pool2d(EMPTY, 1)
    assert g.shape == (0, 3, 1, 1)
    assert ops.adaptive_avg_pool2d_backward(g, EMPTY.shape).shape == EMPTY.shape


def test_a_network_trains_through_an_empty_batch_as_pytorch_does():
    """Conv, batch norm, pooling, dropout and linear layers on no images: every gradient is
    zero, the running statistics stay, as in PyTorch (whose mean over no images is NaN)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(4, 2))
    out = model(tensor(EMPTY))
    assert out.shape == (0, 2)
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad.shape == p.shape and not p.grad.numpy().any(), name
    assert not model.state_dict()["1.running_mean"].any()
    with np.errstate(invalid="ignore"):  # the mean of nothing
        assert np.isnan(F.cross_entropy(out, np.zeros(0, np.int64)).item())
    assert np.isnan(torch.nn.functional.cross_entropy(torch.zeros(0, 2),
                                                      torch.zeros(0, dtype=torch.int64)).item())


@pytest.mark.parametrize("call", [
    lambda: ops.conv2d(np.empty((1, 0, 4, 4)), np.ones((2, 0, 3, 3))),
    lambda: ops.conv2d(np.empty((1, 3, 0, 4)), np.ones((2, 3, 3, 3))),
    lambda: ops.max_pool2d(np.empty((1, 3, 4, 0)), 2),
    lambda: ops.adaptive_avg_pool2d(np.empty((1, 0, 4, 4)), 2),
    lambda: ops.conv2d_backward_input(np.empty((0, 2, 2, 2)), np.ones((2, 3, 3, 3)),
                                      (0, 3, -4, 4)),
])
def test_other_empty_axes_stay_errors(call):
    with pytest.raises(ValueError, match="empty axis but the batch|positive but for a batch"):
        call()
