"""The benchmark's cases and how each implementation runs one: the layers of known networks
(LeNet-5, a ResNet block), the implementations compared on a device (fastconv's algorithms and
"auto", the NumPy reference, PyTorch), their inputs and a ready-to-time call of each."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import device, dispatch, geometry, ops, runtime
from ..kernels import cuda_simulated

SHAPES = ("lenet", "resnet", "all")
BASELINES = ("numpy", "torch")
QUICK_BATCH_DIVISOR = 8  # --quick divides every batch size by this (at least 1)


@dataclass(frozen=True)
class Case:
    """One benchmarked layer: ``op`` ("conv2d", "max_pool2d" or "avg_pool2d") on NCHW ``x``.

    Convolutions take OIHW filters ``w``, poolings a square ``kernel``; ``stride`` and
    ``padding`` are ints, as the ops take them.
    """
    name: str
    op: str
    x: tuple[int, int, int, int]
    w: tuple[int, int, int, int] | None = None
    kernel: int | None = None
    stride: int = 1
    padding: int = 0

    @property
    def dims(self) -> str:
        """The shapes and arguments in words, e.g. ``x 8x64x56x56, w 64x64x3x3, pad 1``."""
        parts = ["x " + "x".join(map(str, self.x))]
        if self.w is not None:
            parts.append("w " + "x".join(map(str, self.w)))
        if self.kernel is not None:
            parts.append(f"{self.op.split('_')[0]} {self.kernel}x{self.kernel}")
        if self.stride != 1:
            parts.append(f"stride {self.stride}")
        if self.padding:
            parts.append(f"pad {self.padding}")
        return ", ".join(parts)

    def geometry(self):
        """The op's resolved geometry (:mod:`fastconv.geometry`), NCHW."""
        if self.op == "conv2d":
            return geometry.conv_geometry(self.x, self.w, self.stride, self.padding, 1, 1, "NCHW")
        return geometry.pool_geometry(self.x, self.kernel, self.stride, self.padding, False, True,
                                      "NCHW")


def _pools(name, x):
    """Max and average 2x2 pooling with stride 2, LeNet's subsampling layers."""
    return tuple(Case(name, op, x, kernel=2, stride=2) for op in ("max_pool2d", "avg_pool2d"))


SHAPE_SETS = {
    "lenet": (
        Case("lenet.C1", "conv2d", (256, 1, 32, 32), (6, 1, 5, 5)),
        *_pools("lenet.S2", (256, 6, 28, 28)),
        Case("lenet.C3", "conv2d", (256, 6, 14, 14), (16, 6, 5, 5)),
        *_pools("lenet.S4", (256, 16, 10, 10)),
    ),
    "resnet": (
        Case("resnet.3x3", "conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=1),
        Case("resnet.3x3s2", "conv2d", (8, 64, 56, 56), (128, 64, 3, 3), stride=2, padding=1),
        Case("resnet.1x1", "conv2d", (8, 256, 28, 28), (64, 256, 1, 1)),
    ),
}


# On a GPU the ResNet layers run at batch 64, with a wide 3x3 layer besides.
GPU_SHAPE_SETS = {
    "lenet": SHAPE_SETS["lenet"],
    "resnet": (
        *(dataclasses.replace(c, x=(64, *c.x[1:])) for c in SHAPE_SETS["resnet"]),
        Case("resnet.3x3-256", "conv2d", (64, 256, 28, 28), (256, 256, 3, 3), padding=1),
    ),
}


def cases(shapes: str = "all", batch: int | None = None, quick: bool = False,
          device: str = "cpu") -> list[Case]:
    """The cases of the shape set ``shapes`` ("lenet", "resnet" or "all") on ``device``.
    ``batch`` sets every batch size; otherwise ``quick`` divides each by
    :data:`QUICK_BATCH_DIVISOR` (at least 1)."""
    if shapes not in SHAPES:
        raise ValueError(f"shapes must be one of {SHAPES}, got {shapes!r}")
    sets = SHAPE_SETS if device == "cpu" else GPU_SHAPE_SETS
    chosen = [c for name, cs in sets.items() if shapes in (name, "all") for c in cs]
    if batch is None and not quick:
        return chosen
    return [dataclasses.replace(c, x=(batch or max(1, c.x[0] // QUICK_BATCH_DIVISOR), *c.x[1:]))
            for c in chosen]


def directions(case: Case) -> tuple[str, str]:
    """The benchmarked ops of a case: forward, then backward (conv: input and weight)."""
    return case.op, f"{case.op}_backward"


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def has_torch_cuda() -> bool:
    """Whether PyTorch is installed and sees a GPU (never under the CUDA simulator)."""
    if cuda_simulated() or not has_torch():
        return False
    import torch
    return torch.cuda.is_available()


def baselines(on: str = "cpu") -> tuple[str, ...]:
    """The baselines that run on device ``on``."""
    if on == "cpu":
        return ("numpy", "torch") if has_torch() else ("numpy",)
    return ("torch",) if has_torch_cuda() else ()


def impls(op: str, on: str = "cpu") -> tuple[str, ...]:
    """Implementations benchmarked for ``op`` on device ``on``: fastconv's, then the baselines."""
    if op.startswith("conv2d"):
        ours = (*(a for a in ops.algorithms(on) if a != dispatch.REFERENCE), "auto")
    else:
        ours = ("fastconv",)
    return ours + baselines(on)


def inputs(case: Case, dtype, on: str = "cpu") -> dict:
    """Random x, w (conv) and the output gradient gy of ``case`` in ``dtype`` on device ``on``,
    from a fixed seed."""
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal(case.x, dtype)}
    if case.w is not None:
        arrays["w"] = rng.standard_normal(case.w, dtype)
    arrays["gy"] = rng.standard_normal(case.geometry().y_shape, dtype)
    return {name: device.to_device(a, on) for name, a in arrays.items()}


def runner(case: Case, op: str, impl: str, arrays: dict, on: str = "cpu") -> Callable[[], object]:
    """A call of ``impl`` computing ``op`` (one of :func:`directions`) on ``arrays`` on device
    ``on``, with all setup done, ready to be timed."""
    if impl == "torch":
        return _torch_runner(case, op, arrays, on)
    if case.op == "conv2d":
        return _conv_runner(case, op, dispatch.REFERENCE if impl == "numpy" else impl, arrays,
                            on)
    return _pool_runner(case, op, impl, arrays, on)


def _conv_runner(case, op, algo, a, on):
    args = {"stride": case.stride, "padding": case.padding, "algo": algo, "device": on}
    if op == "conv2d":
        return lambda: ops.conv2d(a["x"], a["w"], **args)

    def backward():
        ops.conv2d_backward_input(a["gy"], a["w"], a["x"].shape, **args)
        ops.conv2d_backward_weight(a["gy"], a["x"], a["w"].shape, **args)
    return backward


# What each pooling op of fastconv.ops takes before its pooling arguments.
_POOL_ARGS = {"max_pool2d": ("x",), "max_pool2d_backward": ("gy", "x"),
              "avg_pool2d": ("x",), "avg_pool2d_backward": ("gy", "x_shape")}


def _pool_runner(case, op, impl, a, on):
    a = {**a, "x_shape": a["x"].shape}
    if impl == "numpy":  # the registered reference takes the geometry, and arrays only
        fn, p = dispatch.implementations(op, "cpu")[dispatch.REFERENCE], case.geometry()
        arrays = [a[name] for name in _POOL_ARGS[op] if name != "x_shape"]
        return lambda: fn(p, *arrays)
    fn, args = getattr(ops, op), [a[name] for name in _POOL_ARGS[op]]
    return lambda: fn(*args, case.kernel, case.stride, case.padding, device=on)


def _torch_runner(case, op, a, on):
    """PyTorch on fastconv's thread count, or on the GPU with cuDNN in FP32 (TF32 off, its own
    autotuning on), on the arrays themselves (zero-copy); backward is autograd's, timed without
    the forward."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(runtime.get_num_threads())
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = on == "cuda"  # cuDNN at its best: it times its algorithms
    wrap = torch.from_numpy if on == "cpu" else torch.from_dlpack
    tensors = [wrap(a[name]) for name in ("x", "w") if name in a]
    if case.op == "conv2d":
        def forward(x, w):
            return F.conv2d(x, w, stride=case.stride, padding=case.padding)
    else:
        pool = getattr(F, case.op)

        def forward(x):
            return pool(x, case.kernel, case.stride, case.padding)
    if op == case.op:
        def run():
            with torch.no_grad():
                return forward(*tensors)
        return run
    leaves = [t.detach().requires_grad_() for t in tensors]  # the gradients of x and w
    y, gy = forward(*leaves), wrap(a["gy"])
    return lambda: torch.autograd.grad(y, leaves, gy, retain_graph=True)


def work(case: Case, op: str, arrays: dict) -> tuple[float | None, float | None]:
    """(flops, bytes) of one call of ``op``: flops for a convolution (its backward computes the
    input and the weight gradient, each as costly as the forward), the bytes read and written
    for a pooling."""
    if case.op == "conv2d":
        return case.geometry().flops * (1 if op == case.op else 2), None
    x, gy = arrays["x"], arrays["gy"]
    reads_x_twice = op == "max_pool2d_backward"  # reads x and gy, writes gx
    return None, x.itemsize * ((2 if reads_x_twice else 1) * x.size + gy.size)
