"""nn modules, optimisers and LeNet-5 against PyTorch: one training step from the same weights
and batch, every optimiser update, state_dict round trips, names and initialisation."""

import numpy as np
import pytest
import torch

import fastconv
from fastconv import models, nn, optim, tensor
from fastconv.implementations import driver
from fastconv.kernels import optim as kernel_optim
from fastconv.nn import functional as F
from oracle import rel_error
from torch_lenet5 import TorchLeNet5


def _pair(activation="relu", pool="max", seed=0):
    torch.manual_seed(seed)
    reference = TorchLeNet5(activation, pool)
    model = models.LeNet5(activation=activation, pool=pool)
    model.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})
    return model, reference


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("activation, pool", [("relu", "max"), ("tanh", "avg")])
def test_lenet5_step_matches_pytorch(activation, pool):
    model, reference = _pair(activation, pool)
    x, y = _batch()
    loss = F.cross_entropy(model(tensor(x)), y)
    loss.backward()
    torch_loss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(x)),
                                                   torch.from_numpy(y))
    torch_loss.backward()
    assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-5)
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert rel_error(p.grad.numpy(), grads[name].grad.numpy()) < 1e-4, name


def test_lenet5_names_and_shapes_load_a_pytorch_state_dict():
    model = models.LeNet5()
    assert [n for n, _ in model.named_parameters()] == [
        f"{layer}.{kind}" for layer in ("c1", "c3", "c5", "f6", "output")
        for kind in ("weight", "bias")]
    state = TorchLeNet5().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: v.shape for k, v in model.state_dict().items()}


def _run_optimizer(make_ours, make_theirs, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((3, 4)).astype(np.float32)
    grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(steps)]
    ours, theirs = nn.Parameter(start.copy()), torch.nn.Parameter(torch.from_numpy(start.copy()))
    opt_ours, opt_theirs = make_ours([ours]), make_theirs([theirs])
    for g in grads:
        ours.grad = tensor(g)
        theirs.grad = torch.from_numpy(g.copy())
        opt_ours.step()
        opt_theirs.step()
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True), dict(lr=0.1, momentum=0.5, weight_decay=0.01),
], ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()))
def test_sgd_matches_torch(kwargs):
    _run_optimizer(lambda p: optim.SGD(p, **kwargs), lambda p: torch.optim.SGD(p, **kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(lr=1e-3), dict(lr=1e-2, betas=(0.8, 0.9)), dict(lr=1e-3, eps=1e-6, weight_decay=0.1),
], ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()))
def test_adam_matches_torch(kwargs):
    _run_optimizer(lambda p: optim.Adam(p, **kwargs), lambda p: torch.optim.Adam(p, **kwargs))


def _adam_float64(param, grads, lr, betas, eps, weight_decay):
    """torch.optim.Adam's rule written out in float64: the reference for ops.adam_step."""
    p, m, v = param.astype(np.float64), np.zeros(param.shape), np.zeros(param.shape)
    (b1, b2) = betas
    for t, grad in enumerate(grads, start=1):
        g = grad + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
    return p, m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("serial_below", [0, 1 << 60], ids=["parallel", "serial"])
def test_adam_step_kernel_matches_float64_rule(dtype, serial_below, monkeypatch):
    monkeypatch.setattr(driver, "SERIAL_WORK", serial_below)
    rng = np.random.default_rng(11)
    param = rng.standard_normal((7, 5, 3)).astype(dtype)
    grads = [rng.standard_normal(param.shape).astype(dtype) for _ in range(5)]
    hyper = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)
    ours, m, v = param.copy(), np.full_like(param, 0), np.full_like(param, 0)
    for t, g in enumerate(grads, start=1):
        before = g.copy()
        fastconv.ops.adam_step(ours, g, m, v, t, **hyper)
        np.testing.assert_array_equal(g, before)  # the gradient is only read
    want = _adam_float64(param, grads, **hyper)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, expected in zip((ours, m, v), want, strict=True):
        assert got.dtype == dtype and rel_error(got, expected) < tol


@pytest.mark.parametrize("serial_below", [0, 1 << 60], ids=["parallel", "serial"])
def test_adam_step_on_lists_matches_float64_rule_in_one_kernel_a_dtype(serial_below,
                                                                       monkeypatch, cpu_calls):
    """Tensors of several sizes, float32 and float64 mixed in one list, cut into chunks of at
    most 16 elements (some tensors smaller than one, others ending in a partial one): each
    follows the rule, in one kernel call for each dtype."""
    monkeypatch.setattr(driver, "SERIAL_WORK", serial_below)
    monkeypatch.setattr(kernel_optim, "CHUNK", 16)
    rng = np.random.default_rng(12)
    shapes = [(7, 5), (3,), (16,), (2, 3, 3), (1,), (40,)]
    dtypes = [np.float32, np.float64, np.float32, np.float64, np.float32, np.float32]
    params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes, strict=True)]
    grads = [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(4)]
    hyper = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)
    ours = [p.copy() for p in params]
    ms, vs = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    for t, gs in enumerate(grads, start=1):
        before = [g.copy() for g in gs]
        fastconv.ops.adam_step(ours, tuple(gs), ms, vs, t, **hyper)
        for g, b in zip(gs, before, strict=True):
            np.testing.assert_array_equal(g, b)  # the gradients are only read
    assert len(cpu_calls) == 2 * len(grads)
    for i, p in enumerate(params):
        want = _adam_float64(p, [gs[i] for gs in grads], **hyper)
        tol = 1e-5 if p.dtype == np.float32 else 1e-12
        for got, expected in zip((ours[i], ms[i], vs[i]), want, strict=True):
            assert got.dtype == p.dtype and rel_error(got, expected) < tol, i


def test_adam_step_on_lists_names_what_it_refuses():
    p = [np.ones((4, 4), np.float32), np.ones(3, np.float32), np.ones(2, np.float32)]
    g, m, v = ([np.zeros_like(a) for a in p] for _ in range(3))
    for bad, error, message in [
            (dict(grad=g[:2]), ValueError,
             "grad must be a list of 3 arrays, as param is, got a list of 2"),
            (dict(m=m[0]), ValueError, "m must be a list of 3 arrays, as param is, got a ndarray"),
            (dict(param=[p[0], p[1][::2], p[2]]), ValueError,
             r"param\[1\] must be a writeable C-contiguous"),
            (dict(m=[m[0], m[1], np.zeros(3, np.float32)]), ValueError,
             r"m\[2\] has shape \(3,\) but an update of param\[2\] needs \(2,\)"),
            (dict(grad=[g[0].astype(np.float64), g[1], g[2]]), TypeError,
             r"one dtype, got param\[0\] float32, grad\[0\] float64"),
            (dict(v=[v[0], None, v[2]]), TypeError, r"v\[1\] must be an array, got None")]:
        with pytest.raises(error, match=message):
            fastconv.ops.adam_step(**{**dict(param=p, grad=g, m=m, v=v), **bad}, step=1)
    for a in p:
        np.testing.assert_array_equal(a, 1)  # nothing ran
    fastconv.ops.adam_step([], [], [], [], 1)  # no tensors: nothing to do


def test_adam_steps_the_parameters_at_each_step_count_together_as_torch_counts_them(
        monkeypatch):
    """A parameter without a gradient for a step falls a step behind the others (as in
    torch.optim.Adam, which counts steps per parameter): the optimiser then makes one
    ops.adam_step call per step count."""
    calls, real = [], fastconv.ops.adam_step
    monkeypatch.setattr(fastconv.ops, "adam_step", lambda param, *args, **kwargs: calls.append(
        (len(param), args[3])) or real(param, *args, **kwargs))
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,), (2, 2))]
    ours = [nn.Parameter(a.copy()) for a in start]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    opt_ours, opt_theirs = optim.Adam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2)
    for with_grad in ((0, 1, 2), (0, 2), (0, 1, 2), (1,)):
        for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
            g = rng.standard_normal(p.shape).astype(np.float32) if i in with_grad else None
            p.grad, q.grad = (None, None) if g is None else (tensor(g), torch.from_numpy(g))
        opt_ours.step()
        opt_theirs.step()
    assert calls == [(3, 1), (2, 2), (2, 3), (1, 2), (1, 3)]
    for p, q in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_adam_step_refuses_what_it_cannot_update_in_place():
    p, g = np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    with pytest.raises(ValueError, match="param must be a writeable C-contiguous"):
        fastconv.ops.adam_step(p[:, ::2], g[:, ::2], m[:, ::2], v[:, ::2], 1)
    frozen = v.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="v must be a writeable"):
        fastconv.ops.adam_step(p, g, m, frozen, 1)
    with pytest.raises(ValueError, match=r"m has shape \(4, 3\) but an update of param needs"):
        fastconv.ops.adam_step(p, g, np.zeros((4, 3), np.float32), v, 1)
    with pytest.raises(TypeError, match="one dtype"):
        fastconv.ops.adam_step(p, g.astype(np.float64), m, v, 1)
    with pytest.raises(ValueError, match="step must be an int >= 1"):
        fastconv.ops.adam_step(p, g, m, v, 0)
    np.testing.assert_array_equal(p, 1)  # nothing ran


def _sgd_float64(param, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
    """torch.optim.SGD's rule written out in float64: the reference for ops.sgd_step. Returns
    (p, b), b None without momentum."""
    p, b = param.astype(np.float64), None
    for grad in grads:
        d = grad + weight_decay * p
        if momentum:
            b = d if b is None else momentum * b + (1 - dampening) * d
            d = d + momentum * b if nesterov else b
        p = p - lr * d
    return p, b


SGD_SETTINGS = [dict(lr=0.1), dict(lr=0.1, momentum=0.9, weight_decay=0.05),
                dict(lr=0.1, momentum=0.8, dampening=0.3),
                dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)]


@pytest.mark.parametrize("hyper", SGD_SETTINGS,
                         ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()))
@pytest.mark.parametrize("serial_below", [0, 1 << 60], ids=["parallel", "serial"])
def test_sgd_step_on_lists_matches_float64_rule_in_one_kernel_a_dtype(hyper, serial_below,
                                                                      monkeypatch, cpu_calls):
    """As Adam's: tensors of several sizes, float32 and float64 in one list, in chunks of at
    most 16 elements; the first step (buffers new: b = d) and three after it, in one kernel
    call a dtype each; the gradients only read. A single array of each dtype alike."""
    monkeypatch.setattr(driver, "SERIAL_WORK", serial_below)
    monkeypatch.setattr(kernel_optim, "CHUNK", 16)
    rng = np.random.default_rng(13)
    shapes = [(7, 5), (3,), (16,), (2, 3, 3), (1,), (40,)]
    dtypes = [np.float32, np.float64, np.float32, np.float64, np.float32, np.float32]
    params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes, strict=True)]
    grads = [[rng.standard_normal(p.shape).astype(p.dtype) for p in params] for _ in range(4)]
    ours = [p.copy() for p in params]
    buffers = [np.full_like(p, np.nan) for p in params] if hyper.get("momentum") else None
    singles = [(p.copy(), None if buffers is None else np.zeros_like(p))
               for p in (params[0], params[1])]  # a float32 array and a float64 one
    for t, gs in enumerate(grads):
        before = [g.copy() for g in gs]
        fastconv.ops.sgd_step(ours, tuple(gs), buffers, **hyper, first_step=t == 0)
        for g, b in zip(gs, before, strict=True):
            np.testing.assert_array_equal(g, b)  # the gradients are only read
        for (p, b), g in zip(singles, gs[:2], strict=True):
            fastconv.ops.sgd_step(p, g, b, **hyper, first_step=t == 0)
    assert len(cpu_calls) == (2 + 2) * len(grads)
    for i, (p, got) in enumerate(zip(params, ours, strict=True)):
        want, want_buffer = _sgd_float64(p, [gs[i] for gs in grads], **hyper)
        tol = 1e-5 if p.dtype == np.float32 else 1e-12
        assert got.dtype == p.dtype and rel_error(got, want) < tol, i
        if buffers is not None:  # the NaNs it started with never read
            assert buffers[i].dtype == p.dtype and rel_error(buffers[i], want_buffer) < tol, i
        if i < len(singles):
            np.testing.assert_array_equal(singles[i][0], got)
            if buffers is not None:
                np.testing.assert_array_equal(singles[i][1], buffers[i])


def test_sgd_step_names_what_it_refuses():
    p = [np.ones((4, 4), np.float32), np.ones(3, np.float32), np.ones(2, np.float32)]
    g, b = ([np.zeros_like(a) for a in p] for _ in range(2))
    frozen = np.zeros(3, np.float32)
    frozen.flags.writeable = False
    for bad, error, message in [
            (dict(grad=g[:2]), ValueError,
             "grad must be a list of 3 arrays, as param is, got a list of 2"),
            (dict(momentum_buffer=b[0]), ValueError,
             "momentum_buffer must be a list of 3 arrays, as param is, got a ndarray"),
            (dict(param=[p[0], p[1][::2], p[2]]), ValueError,
             r"param\[1\] must be a writeable C-contiguous"),
            (dict(momentum_buffer=[b[0], frozen, b[2]]), ValueError,
             r"momentum_buffer\[1\] must be a writeable C-contiguous"),
            (dict(momentum_buffer=[b[0], b[1], np.zeros(3, np.float32)]), ValueError,
             r"momentum_buffer\[2\] has shape \(3,\) but an update of param\[2\] needs"),
            (dict(grad=[g[0], g[1].astype(np.float64), g[2]]), TypeError,
             r"one dtype, got param\[1\] float32, grad\[1\] float64"),
            (dict(grad=[g[0], g[1], None]), TypeError, r"grad\[2\] must be an array, got None"),
            (dict(momentum_buffer=None), ValueError, "momentum=0.9 needs a momentum_buffer"),
            (dict(momentum=0.0), ValueError, "momentum_buffer is for momentum, which is 0"),
            (dict(nesterov=True, dampening=0.1), ValueError, "Nesterov momentum requires"),
            (dict(nesterov=True, momentum=0.0, momentum_buffer=None), ValueError,
             "Nesterov momentum requires"),
            (dict(lr=-0.1), ValueError, r"lr must lie in \[0, inf\]"),
            (dict(dampening=1.5), ValueError, r"dampening must lie in \[0, 1\]"),
            (dict(weight_decay="0"), TypeError, "weight_decay must be a real number"),
            (dict(first_step=1), TypeError, "first_step must be a bool")]:
        with pytest.raises(error, match=message):
            fastconv.ops.sgd_step(**{**dict(param=p, grad=g, momentum_buffer=b, lr=0.1,
                                            momentum=0.9), **bad})
    for a in p:
        np.testing.assert_array_equal(a, 1)  # nothing ran
    fastconv.ops.sgd_step([], [], [], momentum=0.9)  # no tensors: nothing to do
    fastconv.ops.sgd_step([], [])
    read_only = np.ones(3, np.float32)
    read_only.flags.writeable = False
    fastconv.ops.sgd_step(p, [np.ones((4, 8), np.float32)[:, ::2], read_only,
                              np.ones(2, np.float32)], lr=0.5)
    for a in p:  # a strided gradient and a read-only one are only read
        np.testing.assert_array_equal(a, 0.5)


def test_sgd_steps_new_and_kept_buffers_apart_as_torch_starts_them(monkeypatch):
    """A parameter's buffer starts at its first gradient (as in torch.optim.SGD): a step where
    some have buffers and others start theirs makes one ops.sgd_step call for each kind; a
    model all past its first step, one call."""
    calls, real = [], fastconv.ops.sgd_step
    monkeypatch.setattr(fastconv.ops, "sgd_step", lambda param, *args, **kwargs: calls.append(
        (len(param), args[-1])) or real(param, *args, **kwargs))
    rng = np.random.default_rng(6)
    start = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,), (2, 2))]
    ours = [nn.Parameter(a.copy()) for a in start]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in start]
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    opt_ours, opt_theirs = optim.SGD(ours, **hyper), torch.optim.SGD(theirs, **hyper)
    for with_grad in ((0, 2), (0, 1, 2), (1,), (0, 1, 2)):
        for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
            g = rng.standard_normal(p.shape).astype(np.float32) if i in with_grad else None
            p.grad, q.grad = (None, None) if g is None else (tensor(g), torch.from_numpy(g))
        opt_ours.step()
        opt_theirs.step()
    assert calls == [(2, True), (2, False), (1, True), (1, False), (3, False)]
    for p, q, state in zip(ours, theirs, opt_ours.state, strict=True):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(state["buffer"], opt_theirs.state[q]["momentum_buffer"],
                                   rtol=1e-6, atol=1e-7)


def test_optimizer_skips_parameters_without_gradients_and_zero_grad_clears():
    p, q = nn.Parameter(np.ones(2, np.float32)), nn.Parameter(np.ones(2, np.float32))
    opt = optim.SGD([p, q], lr=1.0)
    p.grad = tensor(np.ones(2, np.float32))
    opt.step()
    np.testing.assert_array_equal(p.numpy(), 0)
    np.testing.assert_array_equal(q.numpy(), 1)
    opt.zero_grad()
    assert p.grad is None
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])


def test_state_dict_round_trip_and_strictness():
    a, b = models.LeNet5(), models.LeNet5()
    b.load_state_dict(a.state_dict())
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    state = a.state_dict()
    state["c1.weight"][...] = 7  # a copy: the model is untouched
    assert not np.any(a.c1.weight.numpy() == 7)
    missing = {k: v for k, v in state.items() if k != "f6.bias"}
    with pytest.raises(KeyError, match="f6.bias"):
        b.load_state_dict(missing)
    b.load_state_dict(missing, strict=False)
    with pytest.raises(ValueError, match=r"c1.weight.*\(6, 1, 5, 5\)"):
        b.load_state_dict({**state, "c1.weight": np.zeros((6, 1, 3, 3), np.float32)})


def test_default_init_follows_pytorch_bounds():
    fastconv.manual_seed(0)
    conv, linear = nn.Conv2d(16, 120, 5), nn.Linear(120, 84)
    for layer, fan_in in ((conv, 16 * 25), (linear, 120)):
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.weight, layer.bias):
            assert p.dtype == np.float32
            assert np.abs(p.numpy()).max() <= bound
            assert np.abs(p.numpy()).max() > 0.9 * bound  # uniform, not a narrower law
    fastconv.manual_seed(3)
    first = nn.Linear(4, 4).weight.numpy()
    fastconv.manual_seed(3)
    np.testing.assert_array_equal(first, nn.Linear(4, 4).weight.numpy())


def test_sequential_fuses_conv_and_activation(monkeypatch):
    seen = []
    real = fastconv.ops.conv2d
    monkeypatch.setattr(fastconv.ops, "conv2d",
                        lambda *a, **k: seen.append(k.get("activation")) or real(*a, **k))
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 1),
                        nn.Flatten(), nn.Linear(8, 3), nn.ReLU())
    x = tensor(np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32))
    out = net(x)
    assert seen == ["tanh", None] and out.shape == (2, 3)
    assert [n for n, _ in net.named_parameters()] == [
        "0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"]


def test_train_and_eval_modes():
    model = models.LeNet5()
    assert model.eval() is model and not model.c1.training
    assert model.train().c1.training


class _Block(nn.Module):
    """A conv, a batch norm and a list: parameters, buffers and submodules at two depths."""

    def __init__(self):
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.heads = nn.ModuleList([nn.Linear(4, 2), nn.ReLU()])


class _TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 2), torch.nn.ReLU()])


def test_buffers_and_submodules_are_named_as_pytorch_names_them():
    ours, theirs = _Block(), _TorchBlock()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    assert [type(m).__name__ for m in ours.children()] == ["Conv2d", "BatchNorm2d",
                                                          "ModuleList"]
    assert len(ours.heads) == 2 and isinstance(ours.heads[0], nn.Linear)
    assert ours.state_dict()["bn.num_batches_tracked"].dtype == np.int64
    assert all(b not in ours.parameters() for b in ours.buffers())


def test_a_pytorch_state_dict_with_buffers_loads_strictly_and_back():
    rng = np.random.default_rng(4)
    theirs = _TorchBlock()
    theirs.bn.running_mean.copy_(torch.from_numpy(rng.standard_normal(4).astype(np.float32)))
    theirs.bn.num_batches_tracked.fill_(7)
    ours = _Block()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_array_equal(ours.bn.running_mean.numpy(), theirs.bn.running_mean.numpy())
    assert ours.bn.num_batches_tracked.item() == 7
    back = _TorchBlock()
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()},
                         strict=True)
    for (name, a), b in zip(back.state_dict().items(), theirs.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    state = ours.state_dict()
    del state["bn.running_var"]
    with pytest.raises(KeyError, match="missing.*bn.running_var"):
        _Block().load_state_dict(state)


@pytest.mark.parametrize("momentum, affine, track", [(0.1, True, True), (None, True, True),
                                                     (0.3, False, False)])
def test_batch_norm_layer_matches_pytorch_in_training_and_evaluation(momentum, affine, track):
    rng = np.random.default_rng(5)
    ours = nn.BatchNorm2d(3, momentum=momentum, affine=affine, track_running_stats=track)
    theirs = torch.nn.BatchNorm2d(3, momentum=momentum, affine=affine,
                                  track_running_stats=track)
    for training in (True, True, False):
        ours.train(training), theirs.train(training)
        x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32) * 2 + 1
        xt = torch.from_numpy(x).requires_grad_()
        xf = tensor(x, requires_grad=True)
        y, yt = ours(xf), theirs(xt)
        gy = rng.standard_normal(y.shape).astype(np.float32)
        y.backward(gy), yt.backward(torch.from_numpy(gy))
        assert rel_error(y.numpy(), yt.detach().numpy()) < 1e-5
        assert rel_error(xf.grad.numpy(), xt.grad.numpy()) < 1e-4
        for name, p in ours.named_parameters():
            assert rel_error(p.grad.numpy(), dict(theirs.named_parameters())[name].grad) < 1e-5
    for name, b in theirs.named_buffers():
        assert rel_error(dict(ours.named_buffers())[name].numpy(), b.numpy()) < 1e-6, name
    assert len(ours.state_dict()) == len(theirs.state_dict())


def test_batch_norm_layer_refuses_a_wrong_input_before_any_kernel():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\) got input \(2, 4, 5, 5\) with 4"):
        bn(tensor(np.ones((2, 4, 5, 5), np.float32)))
    with pytest.raises(ValueError, match="4-D input"):
        bn(tensor(np.ones((2, 3, 5), np.float32)))
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        nn.BatchNorm2d(0)
    assert bn.num_batches_tracked.item() == 0  # nothing ran


def test_conv_and_batch_norm_fold_in_evaluation():
    rng = np.random.default_rng(6)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    bn.train()
    bn(conv(tensor(rng.standard_normal((4, 3, 6, 6)).astype(np.float32))))  # running stats
    bn.weight.data[...] = rng.standard_normal(4)
    conv.eval(), bn.eval()
    fused = nn.fuse_conv_bn_eval(conv, bn)
    x = tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    assert rel_error(fused(x).numpy(), bn(conv(x)).numpy()) < 1e-5
    assert fused is not conv and fused.weight is not conv.weight
    with pytest.raises(ValueError, match="evaluation mode"):
        nn.fuse_conv_bn_eval(conv, bn.train())


def test_pooling_layers_match_pytorch_with_indices_and_adaptive_windows():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    y, indices = nn.MaxPool2d(3, 2, 1, return_indices=True)(tensor(x))
    yt, it = torch.nn.MaxPool2d(3, 2, 1, return_indices=True)(torch.from_numpy(x))
    np.testing.assert_array_equal(y.numpy(), yt.numpy())
    np.testing.assert_array_equal(indices.numpy(), it.numpy())
    assert indices.dtype == np.int64 and not indices.requires_grad
    xf = tensor(x, requires_grad=True)
    xt = torch.from_numpy(x).requires_grad_()
    for size in (1, (4, None), (3, 5)):
        out, want = nn.AdaptiveAvgPool2d(size)(xf), torch.nn.AdaptiveAvgPool2d(size)(xt)
        gy = rng.standard_normal(want.shape).astype(np.float32)
        out.backward(gy), want.backward(torch.from_numpy(gy))
        assert rel_error(out.numpy(), want.detach().numpy()) < 1e-6
        assert rel_error(xf.grad.numpy(), xt.grad.numpy()) < 1e-6


def test_mse_loss_refuses_a_target_of_another_shape():
    """(N, 1) against (N,) would broadcast to N x N differences (PyTorch only warns)."""
    prediction = fastconv.Tensor(np.ones((4, 1)), requires_grad=True)
    with pytest.raises(ValueError, match=r"target \(4,\) must have input's shape \(4, 1\)"):
        F.mse_loss(prediction, fastconv.Tensor(np.ones(4)))
    loss = F.mse_loss(prediction, fastconv.Tensor(np.zeros((4, 1))))
    assert loss.item() == 1.0
