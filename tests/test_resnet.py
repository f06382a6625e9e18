"""models.ResNet against the same network written in PyTorch (benchmarks/torch_resnet.py):
torchvision's names, strict state_dict loading both ways, and training steps from the same
weights that agree on the loss, every gradient, parameter and buffer."""

import numpy as np
import pytest
import torch

from fastconv import models, optim, tensor
from fastconv.nn import functional as F
from oracle import rel_error
from torch_resnet import TorchResNet


@pytest.mark.parametrize("depth", [8, 14, 20])
def test_names_and_shapes_are_torchvisions(depth):
    ours, theirs = models.ResNet(depth, width=4), TorchResNet(depth, width=4)
    state = theirs.state_dict()
    assert list(ours.state_dict()) == list(state)
    assert all(ours.state_dict()[k].shape == tuple(v.shape) for k, v in state.items())
    assert "layer2.0.downsample.0.weight" in state and "layer1.0.downsample.0.weight" not in state
    blocks = (depth - 2) // 6
    assert len(ours.layer3) == blocks and ours.fc.weight.shape == (10, 16)


def test_initialisation_follows_torchvision():
    """Convs N(0, 2 / fan_out), batch norms 1 and 0: the stem's std is sqrt(2 / (16 * 9))."""
    model = models.ResNet(20)
    weights = model.layer3[0].conv2.weight.numpy()
    assert abs(weights.std() - np.sqrt(2 / (64 * 9))) < 0.02 * np.sqrt(2 / (64 * 9))
    assert (model.bn1.weight.numpy() == 1).all() and not model.bn1.bias.numpy().any()


def test_training_steps_match_pytorch():
    torch.manual_seed(0)
    theirs = TorchResNet(8, width=4)
    ours = models.ResNet(8, width=4)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours_opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    theirs_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
        labels = rng.integers(0, 10, 2)
        loss = F.cross_entropy(ours(tensor(x)), labels)
        torch_loss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)),
                                                       torch.from_numpy(labels))
        assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-5)
        ours_opt.zero_grad(), theirs_opt.zero_grad()
        loss.backward(), torch_loss.backward()
        grads = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            assert rel_error(p.grad.numpy(), grads[name].grad.numpy()) < 1e-4, name
        ours_opt.step(), theirs_opt.step()
    state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert rel_error(value, state[name].numpy()) < 1e-4, name
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()},
                           strict=True)


@pytest.mark.parametrize("depth, error", [(9, "depth must be 6n"), (2, "depth must be 6n"),
                                          (True, "depth must be 6n")])
def test_bad_depths_are_refused(depth, error):
    with pytest.raises(ValueError, match=error):
        models.ResNet(depth)
