"""Optimisers with PyTorch's exact update rules, updating parameters' arrays in place, and the
cosine learning-rate schedule.

Optimizer keeps the parameter list, per-parameter state and the count of steps taken; SGD adds
momentum (and Nesterov's look-ahead) to the plain gradient step; Adam adds a second moment and
bias correction to SGD's momentum. Each updates all parameters in one kernel
(fastconv.ops.sgd_step and ops.adam_step on lists of arrays).
"""

import math

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
        self.steps = 0  # steps taken: what a learning-rate schedule follows

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self._update_all([(p, state) for p, state in zip(self.params, self.state, strict=True)
                          if p.grad is not None])
        self.steps += 1

    def _update_all(self, updates):
        """Update each Tensor ``p`` of the (p, state) pairs in place from ``p.grad``; ``state``
        is its own."""
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

    def _update_all(self, updates):
        """One ops.sgd_step over the parameters on the same device whose momentum buffers are
        all new (state["buffer"], allocated here, which the kernel sets to d) or all kept: all
        of them after the first step, unless a parameter went without a gradient until now or
        the model spans devices."""
        groups = {}
        for p, state in updates:
            first = bool(self.momentum) and "buffer" not in state
            if first:
                state["buffer"] = np.zeros_like(p.data)
            groups.setdefault((first, p.device), []).append((p, state))
        for (first, device), group in groups.items():
            ops.sgd_step([p.data for p, _ in group], [p.grad.data for p, _ in group],
                         [state["buffer"] for _, state in group] if self.momentum else None,
                         self.lr, self.momentum, self.dampening, self.weight_decay,
                         self.nesterov, first, device=device)


class Adam(Optimizer):
    """m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, then, as torch.optim.Adam computes it,
    p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay

    def _update_all(self, updates):
        """One ops.adam_step over the parameters at the same step on the same device: all of
        them, unless a parameter went without a gradient for a while (its state then counts
        fewer steps) or the model spans devices."""
        groups = {}
        for p, state in updates:
            if not state:
                state.update(step=0, m=np.zeros_like(p.data), v=np.zeros_like(p.data))
            state["step"] += 1
            groups.setdefault((state["step"], p.device), []).append((p, state))
        for (step, device), group in groups.items():
            ops.adam_step([p.data for p, _ in group], [p.grad.data for p, _ in group],
                          [state["m"] for _, state in group], [state["v"] for _, state in group],
                          step, self.lr, self.betas, self.eps, self.weight_decay, device=device)


class CosineAnnealing:
    """torch.optim.lr_scheduler.CosineAnnealingLR with eta_min 0, stepped after every optimiser
    step: ``lr = base_lr * (1 + cos(pi * t / total_steps)) / 2`` at step t of the optimiser
    (``optimizer.steps``, which a checkpoint keeps, so a resumed run continues the curve)."""

    def __init__(self, optimizer, total_steps, base_lr=None):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.optimizer, self.total_steps = optimizer, total_steps
        self.base_lr = optimizer.lr if base_lr is None else base_lr
        self.step()

    def step(self):
        """Set the optimiser's lr for its next step."""
        t = min(self.optimizer.steps, self.total_steps)
        self.optimizer.lr = self.base_lr * (1 + math.cos(math.pi * t / self.total_steps)) / 2
