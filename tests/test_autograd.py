"""The autograd Tensor: every op's gradient against central finite differences in float64,
the graph's semantics (accumulation, retain_graph, no_grad, freed graphs), and the fused conv's
gradient through each activation."""

import numpy as np
import pytest

import fastconv
from fastconv import Tensor, no_grad, tensor
from fastconv.nn import functional as F


def gradcheck(fn, *shapes, seed=0, positive=False):
    """Compare d<g, fn(inputs)>/d input with central differences along a random direction."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in shapes]
    if positive:
        arrays = [np.abs(a) + 0.5 for a in arrays]
    inputs = [tensor(a, requires_grad=True) for a in arrays]
    out = fn(*inputs)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    for i, a in enumerate(arrays):
        d = rng.standard_normal(a.shape)
        eps = 1e-6

        def loss(shift, i=i, d=d):
            moved = [tensor(b + shift * d if j == i else b) for j, b in enumerate(arrays)]
            return np.vdot(g, fn(*moved).data)

        numeric = (loss(eps) - loss(-eps)) / (2 * eps)
        analytic = np.vdot(inputs[i].grad.data, d)
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8), f"input {i}"


OPS = {
    "add_broadcast": (lambda a, b: a + b, [(3, 4), (4,)]),
    "sub_broadcast": (lambda a, b: a - b, [(2, 3, 4), (3, 1)]),
    "mul_broadcast": (lambda a, b: a * b, [(3, 4), (1, 4)]),
    "div": (lambda a, b: a / b, [(3, 4), (3, 4)]),
    "scalar_ops": (lambda a: (2.0 - a) * 3.0 / 4.0 + 1.0, [(5,)]),
    "rdiv": (lambda a: 1.0 / a, [(4,)]),
    "neg": (lambda a: -a, [(3,)]),
    "pow": (lambda a: a ** 3, [(2, 3)]),
    "matmul": (lambda a, b: a @ b, [(3, 4), (4, 5)]),
    "sum_all": (lambda a: a.sum(), [(3, 4)]),
    "sum_axis_keepdims": (lambda a: a.sum(axis=1, keepdims=True), [(3, 4, 2)]),
    "sum_axes": (lambda a: a.sum(axis=(0, 2)), [(3, 4, 2)]),
    "mean_axis": (lambda a: a.mean(axis=0), [(3, 4)]),
    "mean_all": (lambda a: a.mean(), [(3, 4)]),
    "reshape": (lambda a: a.reshape(4, 3) * 2.0, [(3, 4)]),
    "flatten": (lambda a: a.flatten(), [(2, 3, 4)]),
    "transpose": (lambda a: a.transpose(2, 0, 1), [(2, 3, 4)]),
    "T": (lambda a: a.T @ a, [(3, 4)]),
    "getitem_slices": (lambda a: a[1:, ::2], [(4, 5)]),
    "getitem_fancy": (lambda a: a[np.array([0, 2, 2]), np.array([1, 0, 1])], [(3, 4)]),
    "exp": (lambda a: a.exp(), [(3, 4)]),
    "relu": (lambda a: a.relu(), [(3, 4)]),
    "tanh": (lambda a: a.tanh(), [(3, 4)]),
    "sigmoid": (lambda a: a.sigmoid(), [(3, 4)]),
    "log_softmax": (lambda a: a.log_softmax(), [(3, 5)]),
    "linear": (F.linear, [(4, 3), (2, 3), (2,)]),
    "mse_loss": (F.mse_loss, [(4, 3), (4, 3)]),
    "cross_entropy": (lambda a: F.cross_entropy(a, np.array([0, 2, 1, 2])), [(4, 3)]),
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding="same", groups=2),
               [(2, 4, 7, 6), (6, 2, 3, 3), (6,)]),
    "conv2d_nhwc": (lambda x, w: F.conv2d(x, w, padding=1, data_format="NHWC"),
                    [(2, 5, 5, 3), (3, 3, 3, 4)]),
    "conv2d_relu": (lambda x, w, b: F.conv2d(x, w, b, activation="relu"),
                    [(2, 3, 6, 6), (4, 3, 3, 3), (4,)]),
    "conv2d_tanh": (lambda x, w, b: F.conv2d(x, w, b, activation="tanh"),
                    [(2, 3, 6, 6), (4, 3, 3, 3), (4,)]),
    "conv2d_sigmoid": (lambda x, w, b: F.conv2d(x, w, b, activation="sigmoid"),
                       [(2, 3, 6, 6), (4, 3, 3, 3), (4,)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, stride=2, padding=1), [(2, 3, 7, 7)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2, padding=1, count_include_pad=False),
                   [(2, 3, 5, 5)]),
}


@pytest.mark.parametrize("name", OPS)
def test_gradient_matches_finite_differences(name):
    fn, shapes = OPS[name]
    gradcheck(fn, *shapes)


def test_log_is_differentiable_on_positive_inputs():
    gradcheck(lambda a: a.log(), (3, 4), positive=True)


def test_a_constant_operand_gets_no_gradient_work():
    """The rule for an operand that needs no gradient is not run: a tiny constant divisor's
    rule squares it (-g x / d^2), which underflows and, here, raises."""
    x = tensor([1.0, 2.0], requires_grad=True)
    tiny = tensor([1e-30, 1e-30])
    with np.errstate(all="raise"):
        (x / tiny * tensor([1e-30, 1e-30])).sum().backward()
        (x.reshape(1, 2) @ tensor([[1.0], [1.0]])).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0], rtol=1e-6)
    assert tiny.grad is None
    with pytest.raises(FloatingPointError), np.errstate(all="raise"):
        (x / tensor([1e-30, 1e-30], requires_grad=True)).sum().backward()


def test_gradients_accumulate_across_backward_calls():
    x = tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2 + 3, 4 + 3])


def test_a_node_reached_twice_gets_both_contributions():
    x = tensor([3.0], requires_grad=True)
    y = x * x
    (y + y * x).sum().backward()  # d/dx (x^2 + x^3) = 2x + 3x^2
    np.testing.assert_allclose(x.grad.numpy(), [6 + 27])


def test_graph_is_freed_unless_retained():
    x = tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4, 8])
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_no_grad_records_nothing():
    x = tensor([1.0], requires_grad=True)
    with no_grad():
        y = x * 2.0
        assert not fastconv.is_grad_enabled()
    assert fastconv.is_grad_enabled()
    assert not y.requires_grad and y._parents == ()


def test_deep_graphs_do_not_hit_the_recursion_limit():
    x = tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


def test_backward_needs_a_scalar_or_a_gradient():
    x = tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (x * 2.0).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        tensor([1.0]).backward()


def test_tensor_basics():
    t = tensor([[1.0, 2.0]], requires_grad=True)
    assert t.dtype == np.float32 and t.shape == (1, 2) and t.device == "cpu"
    assert tensor(np.ones(2)).dtype == np.float64  # an ndarray keeps its dtype
    copy = t.numpy()
    copy[0, 0] = 9
    assert t.data[0, 0] == 1
    assert not t.detach().requires_grad
    assert (t.sum()).item() == 3.0
    with pytest.raises(TypeError, match="floating-point"):
        tensor([1, 2], requires_grad=True)


def test_float32_stays_float32_through_scalars():
    x = tensor(np.ones(3, np.float32), requires_grad=True)
    y = (x * 2.5 + 1.0) / 3.0 - 0.5
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_fused_conv_backward_skips_gradients_nobody_needs(monkeypatch):
    calls = []
    real = fastconv.ops.conv2d_backward_input
    monkeypatch.setattr(fastconv.ops, "conv2d_backward_input",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x = tensor(np.ones((1, 1, 4, 4)))  # data: needs no gradient
    w = tensor(np.ones((2, 1, 3, 3)), requires_grad=True)
    F.conv2d(x, w).sum().backward()
    assert calls == [] and w.grad is not None
    assert isinstance(w.grad, Tensor)
