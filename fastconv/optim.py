"""Optimisers with PyTorch's exact update rules, updating parameters' arrays in place.

Optimizer keeps the parameter list and per-parameter state; SGD adds momentum (and Nesterov's
look-ahead) to the plain gradient step in array arithmetic; Adam adds a second moment and bias
correction to SGD's momentum, in one kernel per parameter (fastconv.ops.adam_step).
"""

import numpy as np

from . import ops


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr = lr
        self.state = [{} for _ in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for p, state in zip(self.params, self.state, strict=True):
            if p.grad is not None:
                self._update(p, state)

    def _update(self, p, state):
        """Update the Tensor ``p`` in place from ``p.grad``; ``state`` is its own."""
        raise NotImplementedError


class SGD(Optimizer):
    """p -= lr * d with d = g + weight_decay * p, or with momentum the buffer
    b = momentum * b + (1 - dampening) * d (b = d on the first step), and d = b or, Nesterov,
    d + momentum * b."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def _update(self, p, state):
        param, grad = p.data, p.grad.data
        d = grad + self.weight_decay * param if self.weight_decay else grad
        if self.momentum:
            if "buffer" not in state:
                state["buffer"] = d.copy()
            else:
                state["buffer"] *= self.momentum
                state["buffer"] += (1 - self.dampening) * d
            d = d + self.momentum * state["buffer"] if self.nesterov else state["buffer"]
        param -= self.lr * d


class Adam(Optimizer):
    """m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, then, as torch.optim.Adam computes it,
    p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update(self, p, state):
        if not state:
            state.update(step=0, m=np.zeros_like(p.data), v=np.zeros_like(p.data))
        state["step"] += 1
        ops.adam_step(p.data, p.grad.data, state["m"], state["v"], state["step"], self.lr,
                      self.betas, self.eps, self.weight_decay, device=p.device)
