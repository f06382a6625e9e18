"""fastconv.torch as PyTorch sees it: PyTorch's own OpInfo sample inputs through every function
(outputs and gradients, float32 and float64), torch.library.opcheck of every custom op,
gradcheck, torch.compile with no graph break and torch.export of converted networks."""

import copy
import functools
import importlib.util
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastconv.torch as ft

FUNCTIONS = {"nn.functional.conv2d": ft.conv2d,
             "nn.functional.conv_transpose2d": ft.conv_transpose2d,
             "nn.functional.max_pool2d": ft.max_pool2d,
             "nn.functional.avg_pool2d": ft.avg_pool2d,
             "nn.functional.adaptive_avg_pool2d": ft.adaptive_avg_pool2d,
             "nn.functional.batch_norm": ft.batch_norm}


@functools.cache
def opinfos():
    """PyTorch's OpInfo entries of FUNCTIONS. Their module freezes torch.backends' global flags
    on import (PyTorch's own test suite sets them only through a context manager), which
    would break every later test that sets them (the benchmark's TF32 switch): they are
    thawed again."""
    if importlib.util.find_spec("expecttest") is None:  # the GPU machine's image lacks it
        pytest.skip("PyTorch's OpInfo database (torch.testing._internal) needs expecttest: "
                    "pip install expecttest (on the GPU machine, carry its wheel: README)")
    from torch.testing._internal.common_methods_invocations import op_db
    torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert not torch.backends.flags_frozen()
    return {info.name: info for info in op_db
            if info.name in FUNCTIONS and not info.variant_test_name}

TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-10)}


def _refused_by_design(name, sample):
    """What fastconv refuses where PyTorch computes: batch norm's momentum outside [0, 1] (an
    extrapolation past the batch statistics) and 1-D input (no channel axis)."""
    if name != "nn.functional.batch_norm":
        return None
    if sample.input.dim() < 2:
        return r"batch_norm takes input \(N, C, \.\.\.\) of 2 or more axes"
    if not 0 <= sample.kwargs.get("momentum", 0.1) <= 1:
        return r"momentum must lie in \[0, 1\]"
    return None


def _leaves(sample):
    return [t for t in (sample.input, *sample.args, *sample.kwargs.values())
            if isinstance(t, torch.Tensor) and t.requires_grad]


def _run(function, sample, leaves):
    """The output (the first of a tuple) and the gradients of sum(output * cotangent)."""
    out = function(sample.input, *sample.args, **sample.kwargs)
    y = out[0] if isinstance(out, tuple) else out
    cotangent = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    grads = torch.autograd.grad((y * cotangent).sum(), leaves, allow_unused=True) if (
        leaves and y.requires_grad) else ()
    return out, grads


def _gpu_missing():
    """Why the sweep cannot run on a GPU here, or None."""
    if not torch.cuda.is_available():
        return "this PyTorch build or machine has no CUDA GPU"
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (the cuda12/cuda13 extra)"
    return None


ON_GPU = pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(_gpu_missing() is not None,
                                        reason=f"needs a CUDA GPU: {_gpu_missing()}")])


@pytest.mark.parametrize("device", ["cpu", ON_GPU])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_pytorchs_opinfo_samples_match(name, dtype, device):
    """Every sample PyTorch's OpInfo database draws for the function (its argument forms:
    unbatched input, dilation, ceil_mode, return_indices, divisor_override, one-element
    sizes...) gives PyTorch's output and gradients: on the CPU, and on a GPU fastconv's CUDA
    kernels (on the CUDA tensors, zero-copy) against PyTorch's CUDA ops (cuDNN without TF32),
    the GPU check script's conformance sweep."""
    info, matched = opinfos()[name], 0
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    samples = list(info.sample_inputs(device, dtype, requires_grad=True))
    for sample in samples:
        refused = _refused_by_design(name, sample)
        if refused:
            with pytest.raises(ValueError, match=refused):
                FUNCTIONS[name](sample.input, *sample.args, **sample.kwargs)
            continue
        # batch norm updates the running buffers in place: each side gets its own
        theirs_sample = copy.deepcopy(sample)
        leaves, their_leaves = _leaves(sample), _leaves(theirs_sample)
        ours, our_grads = _run(FUNCTIONS[name], sample, leaves)
        theirs, their_grads = _run(info.op, theirs_sample, their_leaves)
        where = f"{sample}"
        torch.testing.assert_close(ours, theirs, **TOLERANCE[dtype],
                                   msg=lambda m, where=where: f"{where}: {m}")
        for got, want in zip(our_grads, their_grads, strict=True):
            torch.testing.assert_close(got, want, **TOLERANCE[dtype],
                                       msg=lambda m, where=where: f"gradient, {where}: {m}")
        torch.testing.assert_close(sample.args, theirs_sample.args, **TOLERANCE[dtype])
        matched += 1
    assert matched >= len(samples) - 5 and matched > 0, (matched, len(samples))


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


OPCHECKS = {
    "conv2d": lambda: (_rand(2, 4, 7, 6), _rand(6, 2, 3, 2), _rand(6), [2, 1], [1, 0, 2, 1],
                       [1, 2], 2),
    "conv2d_backward_input": lambda: (_rand(2, 6, 5, 5), _rand(6, 4, 3, 3), [2, 4, 9, 10],
                                      [2, 2], [1, 1, 1, 1], [1, 1], 1),
    "conv2d_backward_weight": lambda: (_rand(2, 6, 5, 5), _rand(2, 4, 9, 10), [6, 4, 3, 3],
                                       [2, 2], [1, 1, 1, 1], [1, 1], 1),
    "conv_transpose2d": lambda: (_rand(2, 4, 5, 4), _rand(4, 3, 3, 3), _rand(6), [2, 2], [1, 0],
                                 [1, 1], 2, [1, 1]),
    "conv_transpose2d_backward_input": lambda: (_rand(2, 3, 10, 10), _rand(4, 3, 3, 3),
                                                [2, 4, 5, 4], [2, 2], [1, 0], [1, 1], 1,
                                                [1, 1]),
    "conv_transpose2d_backward_weight": lambda: (_rand(2, 3, 10, 10), _rand(2, 4, 5, 4),
                                                 [4, 3, 3, 3], [2, 2], [1, 0], [1, 1], 1,
                                                 [1, 1]),
    "max_pool2d": lambda: (_rand(2, 3, 9, 8), [3, 2], [2, 2], [1, 1], [2, 1], True),
    "max_pool2d_backward": lambda: (_rand(1, 2, 2, 2), torch.tensor([[[[0, 3], [9, 15]]] * 2]),
                                    [1, 2, 4, 4], [2, 2], [2, 2], [0, 0], [1, 1], False),
    "avg_pool2d": lambda: (_rand(2, 3, 9, 8), [3, 3], [2, 1], [1, 1], True, False, None),
    "avg_pool2d_backward": lambda: (_rand(2, 3, 5, 8), [2, 3, 9, 8], [3, 3], [2, 1], [1, 1],
                                    True, True, 7),
    "adaptive_avg_pool2d": lambda: (_rand(2, 3, 9, 8), [4, 3]),
    "adaptive_avg_pool2d_backward": lambda: (_rand(2, 3, 4, 3), [2, 3, 9, 8]),
    "batch_norm": lambda: (_rand(3, 4, 5, 2), _rand(4), _rand(4),
                           torch.zeros(4, dtype=torch.float64),
                           torch.ones(4, dtype=torch.float64), True, 0.1, 1e-5),
    "batch_norm_backward": lambda: (_rand(3, 4, 5, 2), _rand(3, 4, 5, 2), _rand(4),
                                    torch.randn(4, dtype=torch.float64),
                                    torch.rand(4, dtype=torch.float64) + 0.5, True),
}


def test_every_custom_op_is_opchecked():
    assert set(OPCHECKS) == {name for name in dir(torch.ops.fastconv)
                             if isinstance(getattr(torch.ops.fastconv, name),
                                           torch._ops.OpOverloadPacket)}


@pytest.mark.parametrize("name", OPCHECKS)
def test_opcheck(name):
    """torch.library.opcheck: the schema (no undeclared mutation, no aliasing), the fake
    implementation against the real one, the autograd registration, AOT dispatch. The backward
    ops have no derivative of their own (no double backward): their inputs need no grad."""
    torch.manual_seed(0)
    args = OPCHECKS[name]()
    if name.endswith("_backward") or "_backward_" in name:
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(getattr(torch.ops.fastconv, name), args)


def test_gradcheck_through_every_differentiable_op():
    torch.manual_seed(1)
    x, w, b = _rand(2, 4, 6, 5), _rand(6, 2, 3, 3), _rand(6)
    wt = _rand(4, 3, 3, 2)
    checks = [
        (lambda *a: ft.conv2d(*a, stride=(2, 1), padding=1, dilation=(1, 2), groups=2), (x, w, b)),
        (lambda *a: ft.conv_transpose2d(*a, stride=2, padding=1, output_padding=1, groups=2),
         (x, wt, b)),
        (lambda a: ft.max_pool2d(a, 3, 2, 1, dilation=(1, 2), ceil_mode=True), (x,)),
        (lambda a: ft.avg_pool2d(a, 3, 2, 1, ceil_mode=True, divisor_override=5), (x,)),
        (lambda a: ft.adaptive_avg_pool2d(a, (4, 3)), (x,)),
        (lambda a, g, c: ft.batch_norm(a, None, None, g, c, training=True),
         (x, _rand(4), _rand(4))),
    ]
    for function, inputs in checks:
        assert torch.autograd.gradcheck(function, inputs)


class _Decoder(nn.Module):
    """Every kind of layer convert() swaps, and one it leaves to PyTorch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding="same")
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2, dilation=1, return_indices=True)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.smooth = nn.AvgPool2d(3, 1, 1, divisor_override=9)
        self.head = nn.AdaptiveAvgPool2d((2, 2))
        self.mix = nn.Conv1d(4, 4, 1)

    def forward(self, x):
        y, _ = self.pool(torch.relu(self.bn(self.conv(x))))
        y = self.head(self.smooth(self.up(y)))
        return self.mix(y.flatten(2))


def _converted():
    torch.manual_seed(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ft.convert(_Decoder().double())
    return model, [str(w.message) for w in caught]


def test_convert_swaps_every_kind_and_names_what_it_leaves():
    model, messages = _converted()
    kinds = {name: type(layer) for name, layer in model.named_children()}
    assert kinds == dict(conv=ft.Conv2d, bn=ft.BatchNorm2d, pool=ft.MaxPool2d,
                         up=ft.ConvTranspose2d, smooth=ft.AvgPool2d, head=ft.AdaptiveAvgPool2d,
                         mix=nn.Conv1d)
    assert messages == ["fastconv.torch.convert left these layers to PyTorch: mix (Conv1d: no "
                        "fastconv kernel)"]


def _step(model, x):
    """Output, parameter gradients and running statistics of one training step."""
    y = model(x)
    y.square().sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()], [
        b.clone() for b in model.buffers()]


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_traces_a_converted_network_without_graph_breaks(backend):
    """fullgraph=True fails on any graph break; the compiled step equals the eager one, forward,
    backward and the batch norm's running buffers."""
    if backend == "inductor" and not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("inductor compiles C++ and no C compiler is on PATH")
    model, _ = _converted()
    eager = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for got, want in zip(_step(compiled, x), _step(eager, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_export_of_a_converted_network_in_eval_mode_runs():
    model, _ = _converted()
    model.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    program = torch.export.export(model, (x,))
    called = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"fastconv.conv2d.default", "fastconv.batch_norm.default",
            "fastconv.max_pool2d.default", "fastconv.conv_transpose2d.default",
            "fastconv.avg_pool2d.default", "fastconv.adaptive_avg_pool2d.default"} <= called
    torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)


def test_bad_arguments_are_refused_before_any_op_runs():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match=r"conv2d takes 3-D \(C, H, W\) or 4-D"):
        ft.conv2d(torch.randn(5, 5), torch.randn(1, 1, 3, 3))
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got ndarray"):
        ft.max_pool2d(x.numpy(), 2)
    with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half of kernel_size"):
        ft.max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="divisor_override must not be zero"):
        ft.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match=r"output_padding \(2, 2\) must be smaller than the "
                                         r"stride"):
        ft.conv_transpose2d(x, torch.randn(2, 1, 3, 3), stride=2, output_padding=2)
    unbatched = ft.conv2d(x[0], torch.randn(3, 2, 3, 3))
    assert unbatched.shape == (3, 3, 3)
    assert F.max_pool2d(x[0], 2).shape == ft.max_pool2d(x[0], 2).shape == (2, 2, 2)
