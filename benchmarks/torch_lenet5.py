"""fastconv.models.LeNet5 written in PyTorch, with the same layer names, so one's state_dict
loads into the other: the twin the tests and the training comparison share."""

import torch


class TorchLeNet5(torch.nn.Module):
    def __init__(self, activation="relu", pool="max"):
        super().__init__()
        self.c1, self.c3 = torch.nn.Conv2d(1, 6, 5), torch.nn.Conv2d(6, 16, 5)
        self.c5 = torch.nn.Conv2d(16, 120, 5)
        self.f6, self.output = torch.nn.Linear(120, 84), torch.nn.Linear(84, 10)
        self.act = getattr(torch, activation)
        self.pool = getattr(torch.nn.functional, f"{pool}_pool2d")

    def forward(self, x):
        x = self.pool(self.act(self.c1(x)), 2)
        x = self.pool(self.act(self.c3(x)), 2)
        x = self.act(self.c5(x)).flatten(1)
        return self.output(self.act(self.f6(x)))
