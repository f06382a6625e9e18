"""A define-by-run autograd Tensor over NumPy or CuPy arrays, micrograd-sized.

Each operation computes its output array and, when grad mode is on and an input needs a
gradient, records its inputs and a backward closure that maps the output's gradient to one
gradient per input (None where that input needs none). ``backward`` walks the graph once in
reverse topological order (iteratively, so deep graphs don't hit Python's recursion limit),
adds up the gradients reaching each node and accumulates leaf gradients into ``.grad``.

A Tensor's ``device`` ("cpu" or "cuda") says which backend its ops run on; its data is a NumPy
array on the CPU and a CuPy array on the GPU (a NumPy array under the CUDA simulator). The
element-wise maths is written with NumPy's functions, which dispatch to CuPy for CuPy arrays.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import device as devices
from . import ops

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad():
    """Context in which operations record no graph (evaluation, optimiser steps)."""
    before = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = before


def _freed(_):
    raise RuntimeError("trying to backward through the graph a second time: its buffers were "
                       "freed by the first backward; pass retain_graph=True to keep them")


def _rules(parents, *rules):
    """A node's backward from one rule per parent (the output's gradient -> that parent's),
    each run only for a parent that needs a gradient: a constant operand (``x / 2``, a mean's
    count) costs no work."""
    return lambda g: tuple(rule(g) if p.requires_grad else None
                           for p, rule in zip(parents, rules, strict=True))


def _unbroadcast(grad, shape):
    """Sum a broadcast gradient back down to ``shape``."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Tensor:
    """An array with an optional gradient, on ``device`` (by default where ``data`` lives)."""

    __array_priority__ = 1000  # NumPy defers to Tensor's operators (ndarray + Tensor)

    def __init__(self, data, requires_grad=False, device=None):
        self.data = data
        self.device = device or devices.where(data) or "cpu"
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = ""

    # --- what it is ------------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    xp = property(lambda self: devices.array_module(self.device))  # NumPy or CuPy

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({np.array2string(self.data, prefix='tensor(')}{grad})"

    def item(self):
        return self.data.item()

    def numpy(self):
        """A host copy of the data."""
        return np.array(devices.to_device(self.data, "cpu"))

    def detach(self):
        return Tensor(self.data, device=self.device)

    def to(self, device):
        """This tensor on ``device``: itself if already there, else a copy (not a graph node)."""
        device = devices.parse(device)
        if device == self.device:
            return self
        return Tensor(devices.to_device(self.data, device), self.requires_grad, device)

    # --- graph -----------------------------------------------------------------------------
    @staticmethod
    def _result(data, parents, backward, op):
        """The output of an op; records the graph when grad mode is on and an input needs it."""
        device = parents[0].device
        if any(p.device != device for p in parents):
            raise RuntimeError("tensors of one op must be on one device, got "
                               + ", ".join(f"{p.shape} on {p.device}" for p in parents))
        out = Tensor(data, device=device)
        if is_grad_enabled() and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents, out._backward, out._op = parents, backward, op
        return out

    def backward(self, gradient=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) * gradient into every leaf's ``.grad``."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs, "
                                   f"not shape {self.shape}; pass gradient=")
            gradient = self.xp.ones_like(self.data)
        gradient = gradient.data if isinstance(gradient, Tensor) else self.xp.asarray(gradient)
        grads = {id(self): gradient.astype(self.dtype, copy=False)}
        for node in _topological(self):
            grad = grads.pop(id(node), None)
            if grad is None:
                continue
            if node._backward is None:
                total = grad if node.grad is None else node.grad.data + grad
                node.grad = Tensor(total, device=node.device)
                continue
            for parent, g in zip(node._parents, node._backward(grad), strict=True):
                if g is not None and parent.requires_grad:
                    key = id(parent)
                    grads[key] = grads[key] + g if key in grads else g
            if not retain_graph:
                node._parents, node._backward = (), _freed

    # --- arithmetic ------------------------------------------------------------------------
    def _lift(self, other):
        if isinstance(other, Tensor):
            return other
        return Tensor(self.xp.asarray(other, dtype=self.dtype), device=self.device)

    def __add__(self, other):
        other = self._lift(other)
        return Tensor._result(self.data + other.data, (self, other), _rules(
            (self, other), lambda g: _unbroadcast(g, self.shape),
            lambda g: _unbroadcast(g, other.shape)), "add")

    def __mul__(self, other):
        other = self._lift(other)
        return Tensor._result(self.data * other.data, (self, other), _rules(
            (self, other), lambda g: _unbroadcast(g * other.data, self.shape),
            lambda g: _unbroadcast(g * self.data, other.shape)), "mul")

    def __truediv__(self, other):
        other = self._lift(other)
        return Tensor._result(self.data / other.data, (self, other), _rules(
            (self, other), lambda g: _unbroadcast(g / other.data, self.shape),
            lambda g: _unbroadcast(-g * self.data / other.data ** 2, other.shape)), "div")

    def __neg__(self):
        return Tensor._result(-self.data, (self,), lambda g: (-g,), "neg")

    def __sub__(self, other):
        return self + (-self._lift(other))

    def __radd__(self, other):
        return self + other

    def __rsub__(self, other):
        return self._lift(other) - self

    def __rmul__(self, other):
        return self * other

    def __rtruediv__(self, other):
        return self._lift(other) / self

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or not np.isscalar(exponent):
            raise TypeError(f"power takes a scalar exponent, got {type(exponent).__name__}")
        e = self.dtype.type(exponent)
        return Tensor._result(self.data ** e, (self,),
                              lambda g: (g * e * self.data ** (e - 1),), "pow")

    def __matmul__(self, other):
        if self.ndim != 2 or other.ndim != 2:
            raise ValueError(f"@ takes 2-D tensors, got shapes {self.shape} and {other.shape}")
        on = self.device
        return Tensor._result(ops.matmul(self.data, other.data, device=on), (self, other), _rules(
            (self, other), lambda g: ops.matmul(g, other.data.T, device=on),
            lambda g: ops.matmul(self.data.T, g, device=on)), "matmul")

    # --- reductions and shapes -------------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        def backward(g):
            if not keepdims and axis is not None:
                g = self.xp.expand_dims(g, axis)
            return (self.xp.broadcast_to(g, self.shape).copy(),)
        return Tensor._result(self.data.sum(axis=axis, keepdims=keepdims), (self,), backward,
                              "sum")

    def mean(self, axis=None, keepdims=False):
        axes = range(self.ndim) if axis is None else np.atleast_1d(axis)
        count = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axis=axis, keepdims=keepdims) / count

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Tensor._result(self.data.reshape(shape), (self,),
                              lambda g: (g.reshape(self.shape),), "reshape")

    def flatten(self, start_dim=1):
        # the product, not -1: NumPy cannot infer -1 when the batch is empty
        return self.reshape(self.shape[:start_dim] + (int(np.prod(self.shape[start_dim:])),))

    def transpose(self, *axes):
        axes = axes or tuple(reversed(range(self.ndim)))
        inverse = np.argsort(axes)
        return Tensor._result(self.data.transpose(axes), (self,),
                              lambda g: (g.transpose(inverse),), "transpose")

    @property
    def T(self):
        return self.transpose()

    def __getitem__(self, index):
        def backward(g):
            full = self.xp.zeros_like(self.data)
            self.xp.add.at(full, index, g)
            return (full,)
        return Tensor._result(self.data[index], (self,), backward, "getitem")

    # --- elementwise functions -------------------------------------------------------------
    def exp(self):
        out = np.exp(self.data)
        return Tensor._result(out, (self,), lambda g: (g * out,), "exp")

    def log(self):
        return Tensor._result(np.log(self.data), (self,), lambda g: (g / self.data,), "log")

    def relu(self):
        return Tensor._result(np.maximum(self.data, 0), (self,),
                              lambda g: (g * (self.data > 0),), "relu")

    def tanh(self):
        out = np.tanh(self.data)
        return Tensor._result(out, (self,), lambda g: (g * (1 - out * out),), "tanh")

    def sigmoid(self):
        out = 0.5 * (1 + np.tanh(0.5 * self.data))  # stable for large |x|
        return Tensor._result(out, (self,), lambda g: (g * out * (1 - out),), "sigmoid")

    def log_softmax(self, axis=-1):
        shifted = self.data - self.data.max(axis=axis, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return Tensor._result(
            out, (self,),
            lambda g: (g - np.exp(out) * g.sum(axis=axis, keepdims=True),), "log_softmax")


def _topological(root):
    """Nodes reachable from ``root``, each before all of its parents (root first).

    An iterative depth-first post-order: a node is marked when it is expanded, not when it is
    pushed, so a node reached along two paths still comes after every node that feeds it.
    """
    order, expanded, stack = [], set(), [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            order.append(node)
            continue
        if id(node) in expanded:
            continue
        expanded.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p in node._parents if id(p) not in expanded)
    return order[::-1]


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A Tensor holding a copy of ``data`` on ``device`` (by default where ``data`` is: the CPU
    for lists and NumPy arrays). Python floats become float32, as in PyTorch."""
    if isinstance(data, Tensor):
        data = data.data
    source = devices.where(data)
    device = devices.parse(device if device is not None else source)
    if source is None:
        data = np.array(data, dtype=dtype)
        if dtype is None and data.dtype == np.float64:
            data = data.astype(np.float32)
    array = devices.array_module(device).array(devices.to_device(data, device), dtype=dtype)
    if requires_grad and array.dtype.kind != "f":
        raise TypeError(f"only floating-point tensors can require grad, got {array.dtype}")
    return Tensor(array, requires_grad=requires_grad, device=device)
