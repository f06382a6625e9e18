"""A small residual network (Conv2d, BatchNorm2d, ReLU, a residual addition, AdaptiveAvgPool2d,
Dropout, Linear, MaxPool2d with indices) in fastconv and in PyTorch: each loads the other's
state_dict strictly, and from the same weights the two agree on the loss, every parameter and
every buffer after a few SGD steps in training, and on the output in evaluation. PyTorch's
dropout is handed fastconv's masks, recorded as they are drawn."""

import numpy as np
import pytest
import torch

from fastconv import nn, ops, optim, tensor
from fastconv.nn import functional as F
from oracle import rel_error


class Residual(nn.Module):
    def __init__(self, channels):
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class Net(nn.Module):
    def __init__(self):
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.blocks = nn.ModuleList([Residual(8), Residual(8)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                                  nn.Linear(8, 5))

    def forward(self, x):
        x, _ = self.pool(F.relu(self.bn(self.stem(x))))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class TorchResidual(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


class RecordedDropout(torch.nn.Module):
    """Dropout with the masks fastconv drew, in order."""

    def __init__(self, p, masks):
        super().__init__()
        self.p, self.masks = p, masks

    def forward(self, x):
        if not self.training:
            return x
        return x * torch.from_numpy(self.masks.pop(0)) / (1 - self.p)


class TorchNet(torch.nn.Module):
    def __init__(self, masks):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2, return_indices=True)
        self.blocks = torch.nn.ModuleList([TorchResidual(8), TorchResidual(8)])
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                        RecordedDropout(0.3, masks), torch.nn.Linear(8, 5))

    def forward(self, x):
        x, _ = self.pool(torch.relu(self.bn(self.stem(x))))
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.fixture
def masks(monkeypatch):
    """Every dropout mask fastconv draws, appended as it is drawn."""
    drawn, draw = [], ops.dropout

    def recording(*args, **kwargs):
        y, mask = draw(*args, **kwargs)
        drawn.append(np.asarray(mask))
        return y, mask
    monkeypatch.setattr(ops, "dropout", recording)
    return drawn


def test_state_dicts_load_strictly_both_ways(masks):
    theirs = TorchNet(masks)
    ours = Net().load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())
    TorchNet(masks).load_state_dict({k: torch.from_numpy(v)
                                     for k, v in ours.state_dict().items()}, strict=True)


def test_training_steps_and_evaluation_agree_with_pytorch(masks):
    torch.manual_seed(0)
    theirs = TorchNet(masks)
    ours = Net().load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours_opt = optim.SGD(ours.parameters(), lr=0.1)
    theirs_opt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
        labels = rng.integers(0, 5, 6)
        loss = F.cross_entropy(ours(tensor(x)), labels)
        assert len(masks) == 1 and 0 < masks[0].mean() < 1  # drawn, for PyTorch to use
        torch_loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                                       torch.from_numpy(labels))
        assert not masks
        assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-5)
        ours_opt.zero_grad(), theirs_opt.zero_grad()
        loss.backward(), torch_loss.backward()
        ours_opt.step(), theirs_opt.step()
    state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert rel_error(value, state[name].numpy()) < 1e-4, name
    assert ours.bn.num_batches_tracked.item() == 4

    ours.eval(), theirs.eval()
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = theirs(torch.from_numpy(x)).numpy()
    assert rel_error(ours(tensor(x)).numpy(), want) < 1e-5
