"""The benchmark's cases and how each implementation runs one: the suites (every distinct conv
and pooling layer of LeNet-5, ResNet-18, ResNet-50, MobileNetV2, VGG-16 and the CIFAR-style
ResNet fastconv trains, and the ResNets' batch normalisations; the transposed convolutions of
the DCGAN generator and of a U-Net's decoder, with the decoder's 3x3 convs), the
implementations compared on a device (fastconv's algorithms and "auto", the NumPy reference,
PyTorch), their inputs and a ready-to-time call of each."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import device, dispatch, geometry, ops, registry, runtime
from ..implementations import driver
from ..kernels import cuda_simulated

BASELINES = ("numpy", "torch")
CONVS = ("conv2d", "conv_transpose2d")  # the ops with a weight and a choice of algorithm
BATCH = 8  # images per layer, but LeNet-5's (256) and the trained ResNet's: --batch overrides
TRAIN_BATCH = 64  # `fastconv train`'s batch, the CIFAR-style ResNet's in the suite
QUICK_SIZE_DIVISOR = 4  # --quick: batch 1 (LeNet-5 8) and images a quarter the size


@dataclass(frozen=True)
class Case:
    """One benchmarked layer: ``op`` ("conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d"
    or "batch_norm2d", in training) on NCHW ``x``.

    Convolutions take OIHW filters ``w`` (C/groups input channels each; a transposed one
    PyTorch's (C_in, C_out/groups, R, S)), poolings a square ``kernel``; ``stride`` is an int,
    ``padding`` an int or a (rows, columns) pair, as the ops take them.
    """
    name: str
    op: str
    x: tuple[int, int, int, int]
    w: tuple[int, int, int, int] | None = None
    kernel: int | None = None
    stride: int = 1
    padding: int | tuple[int, int] = 0
    groups: int = 1

    @property
    def dims(self) -> str:
        """The shapes and arguments in words, e.g. ``x 8x64x56x56, w 64x64x3x3, pad 1``."""
        parts = ["x " + "x".join(map(str, self.x))]
        if self.w is not None:
            parts.append("w " + "x".join(map(str, self.w)))
        if self.op == "conv_transpose2d":
            parts.append("transposed")
        if self.kernel is not None:
            parts.append(f"{self.op.split('_')[0]} {self.kernel}x{self.kernel}")
        if self.stride != 1:
            parts.append(f"stride {self.stride}")
        if self.padding:
            parts.append(f"pad {self.padding}")
        if self.groups != 1:
            parts.append(f"groups {self.groups}")
        return ", ".join(parts)

    @property
    def y_shape(self):
        """The output's shape (checking that the layer fits)."""
        return self.x if self.op == "batch_norm2d" else self.geometry().y_shape

    def geometry(self):
        """The op's resolved geometry (:mod:`fastconv.geometry`), NCHW (none for a batch
        normalisation)."""
        if self.op == "conv2d":
            return geometry.conv_geometry(self.x, self.w, self.stride, self.padding, 1,
                                          self.groups, "NCHW")
        if self.op == "conv_transpose2d":
            return geometry.conv_transpose_geometry(self.x, self.w, self.stride, self.padding, 0,
                                                    1, self.groups, "NCHW")
        return geometry.pool_geometry(self.x, self.kernel, self.stride, self.padding, False, True,
                                      "NCHW")

    def as_conv2d(self) -> Case:
        """The convolution whose algorithms compute this layer: itself, or for a transposed
        one the conv2d it is the input gradient of (its forward is that conv2d's backward
        input, its backward input that conv2d, its backward weight that conv2d's)."""
        if self.op != "conv_transpose2d":
            return self
        conv = self.geometry().conv
        top, bottom, left, right = conv.padding
        assert top == bottom == left == right, "the suite's transposed layers pad evenly"
        return Case(self.name, "conv2d", conv.x_shape, conv.w_shape, stride=conv.stride[0],
                    padding=top, groups=conv.groups)


def _conv(name, c, size, k, r, stride=1, groups=1, batch=BATCH):
    """A layer of ``k`` r x r filters on ``c`` channels of ``size`` x ``size`` images, padded
    to keep the size at stride 1 (r // 2), at batch BATCH."""
    return Case(name, "conv2d", (batch, c, size, size), (k, c // groups, r, r), stride=stride,
                padding=r // 2, groups=groups)


def _window(name, c, size, k, r, s):
    """A layer of ``k`` r x s filters (an asymmetric window) on ``c`` channels of ``size`` x
    ``size`` images, padded to keep the size, at batch BATCH."""
    return Case(name, "conv2d", (BATCH, c, size, size), (k, c, r, s), padding=(r // 2, s // 2))


def _transposed(name, c, size, k, r, stride, padding=0):
    """A transposed convolution of ``c`` channels of ``size`` x ``size`` images to ``k`` with
    r x r filters, unbiased, at batch BATCH."""
    return Case(name, "conv_transpose2d", (BATCH, c, size, size), (c, k, r, r), stride=stride,
                padding=padding)


def _unet_up(name, c, size):
    """A U-Net decoder stage (milesial's Pytorch-UNet, bilinear=False): ``c`` channels of
    ``size`` x ``size`` upsampled 2x to c / 2, concatenated with the encoder's c / 2 and
    convolved twice with 3x3 filters, padded (the common variant of Ronneberger et al.'s)."""
    return (_transposed(f"{name}.up", c, size, c // 2, 2, 2),
            _conv(f"{name}.conv.double_conv.0", c, 2 * size, c // 2, 3),
            _conv(f"{name}.conv.double_conv.3", c // 2, 2 * size, c // 2, 3))


def _batch_norms(layers, batch=BATCH):
    """A training batch norm after each (name, channels, size) of ``layers``."""
    return tuple(Case(f"{name}.bn", "batch_norm2d", (batch, c, size, size))
                 for name, c, size in layers)


def _pool(name, op, c, size, kernel, stride, padding=0, batch=BATCH):
    return Case(name, op, (batch, c, size, size), kernel=kernel, stride=stride, padding=padding)


def _inverted_residual(name, c, size, expanded, out, stride):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise (the block's stride), 1x1 projection."""
    return (_conv(f"{name}.expand", c, size, expanded, 1),
            _conv(f"{name}.dw", expanded, size, expanded, 3, stride, groups=expanded),
            _conv(f"{name}.project", expanded, size // stride, out, 1))


# Every distinct conv and pooling layer of each network (224 x 224 inputs, LeNet-5's 32 x 32),
# named as torchvision names the modules; a layer repeated in a network is listed once.
# "decoders" holds generators' layers: the DCGAN generator of PyTorch's example (nz 100, ngf 64,
# 64 x 64 images), the decoder of a U-Net on 256 x 256 images with its 1x1 head to 2 classes,
# and EDSR's 3x3 tail to RGB on its 96 x 96 training patches (x2): few output channels read
# from many, which no other network of the suite has.
SUITES = {
    "lenet5": (
        Case("c1", "conv2d", (256, 1, 32, 32), (6, 1, 5, 5)),
        _pool("s2.max", "max_pool2d", 6, 28, 2, 2, batch=256),
        _pool("s2.avg", "avg_pool2d", 6, 28, 2, 2, batch=256),
        Case("c3", "conv2d", (256, 6, 14, 14), (16, 6, 5, 5)),
        _pool("s4.max", "max_pool2d", 16, 10, 2, 2, batch=256),
        _pool("s4.avg", "avg_pool2d", 16, 10, 2, 2, batch=256),
        Case("c5", "conv2d", (256, 16, 5, 5), (120, 16, 5, 5)),
    ),
    "resnet18": (
        _conv("conv1", 3, 224, 64, 7, 2),
        _pool("maxpool", "max_pool2d", 64, 112, 3, 2, 1),
        _conv("layer1.conv", 64, 56, 64, 3),
        _conv("layer2.0.conv1", 64, 56, 128, 3, 2),
        _conv("layer2.0.downsample", 64, 56, 128, 1, 2),
        _conv("layer2.conv", 128, 28, 128, 3),
        _conv("layer3.0.conv1", 128, 28, 256, 3, 2),
        _conv("layer3.0.downsample", 128, 28, 256, 1, 2),
        _conv("layer3.conv", 256, 14, 256, 3),
        _conv("layer4.0.conv1", 256, 14, 512, 3, 2),
        _conv("layer4.0.downsample", 256, 14, 512, 1, 2),
        _conv("layer4.conv", 512, 7, 512, 3),
        _pool("avgpool", "avg_pool2d", 512, 7, 7, 7),
        *_batch_norms((("bn1", 64, 112), ("layer1", 64, 56), ("layer2", 128, 28),
                       ("layer3", 256, 14), ("layer4", 512, 7))),
    ),
    # models.ResNet as `fastconv train --model resnet8..32` runs it: Fashion-MNIST's 1-channel
    # images padded to 32 x 32, width 16, the training batch; every depth has these layers
    "resnet_cifar": (
        _conv("conv1", 1, 32, 16, 3, batch=TRAIN_BATCH),
        _conv("layer1.conv", 16, 32, 16, 3, batch=TRAIN_BATCH),
        _conv("layer2.0.conv1", 16, 32, 32, 3, 2, batch=TRAIN_BATCH),
        _conv("layer2.0.downsample", 16, 32, 32, 1, 2, batch=TRAIN_BATCH),
        _conv("layer2.conv", 32, 16, 32, 3, batch=TRAIN_BATCH),
        _conv("layer3.0.conv1", 32, 16, 64, 3, 2, batch=TRAIN_BATCH),
        _conv("layer3.0.downsample", 32, 16, 64, 1, 2, batch=TRAIN_BATCH),
        _conv("layer3.conv", 64, 8, 64, 3, batch=TRAIN_BATCH),
        *_batch_norms((("layer1", 16, 32), ("layer2", 32, 16), ("layer3", 64, 8)),
                      TRAIN_BATCH),
    ),
    "resnet50": (  # torchvision's bottleneck (v1.5): the stride on the 3x3
        _conv("layer1.0.conv1", 64, 56, 64, 1),
        _conv("layer1.conv2", 64, 56, 64, 3),
        _conv("layer1.conv3", 64, 56, 256, 1),
        _conv("layer1.conv1", 256, 56, 64, 1),
        _conv("layer2.0.conv1", 256, 56, 128, 1),
        _conv("layer2.0.conv2", 128, 56, 128, 3, 2),
        _conv("layer2.0.downsample", 256, 56, 512, 1, 2),
        _conv("layer2.conv3", 128, 28, 512, 1),
        _conv("layer2.conv1", 512, 28, 128, 1),
        _conv("layer2.conv2", 128, 28, 128, 3),
        _conv("layer3.0.conv1", 512, 28, 256, 1),
        _conv("layer3.0.conv2", 256, 28, 256, 3, 2),
        _conv("layer3.0.downsample", 512, 28, 1024, 1, 2),
        _conv("layer3.conv3", 256, 14, 1024, 1),
        _conv("layer3.conv1", 1024, 14, 256, 1),
        _conv("layer3.conv2", 256, 14, 256, 3),
        _conv("layer4.0.conv1", 1024, 14, 512, 1),
        _conv("layer4.0.conv2", 512, 14, 512, 3, 2),
        _conv("layer4.0.downsample", 1024, 14, 2048, 1, 2),
        _conv("layer4.conv3", 512, 7, 2048, 1),
        _conv("layer4.conv1", 2048, 7, 512, 1),
        _conv("layer4.conv2", 512, 7, 512, 3),
    ),
    "mobilenet_v2": (
        _conv("features.0", 3, 224, 32, 3, 2),
        _conv("features.1.dw", 32, 112, 32, 3, groups=32),
        _conv("features.1.project", 32, 112, 16, 1),
        *_inverted_residual("features.2", 16, 112, 96, 24, 2),
        *_inverted_residual("features.3", 24, 56, 144, 24, 1),
        *_inverted_residual("features.4", 24, 56, 144, 32, 2)[1:],
        *_inverted_residual("features.5", 32, 28, 192, 32, 1),
        *_inverted_residual("features.7", 32, 28, 192, 64, 2)[1:],
        *_inverted_residual("features.8", 64, 14, 384, 64, 1),
        _conv("features.11.project", 384, 14, 96, 1),
        *_inverted_residual("features.12", 96, 14, 576, 96, 1),
        *_inverted_residual("features.14", 96, 14, 576, 160, 2)[1:],
        *_inverted_residual("features.15", 160, 7, 960, 160, 1),
        _conv("features.17.project", 960, 7, 320, 1),
        _conv("features.18", 320, 7, 1280, 1),
    ),
    "vgg16": (
        _conv("features.0", 3, 224, 64, 3),
        _conv("features.2", 64, 224, 64, 3),
        _pool("features.4", "max_pool2d", 64, 224, 2, 2),
        _conv("features.5", 64, 112, 128, 3),
        _conv("features.7", 128, 112, 128, 3),
        _conv("features.10", 128, 56, 256, 3),
        _conv("features.12", 256, 56, 256, 3),
        _conv("features.17", 256, 28, 512, 3),
        _conv("features.19", 512, 28, 512, 3),
        _conv("features.24", 512, 14, 512, 3),
    ),
    # torchvision's Inception v3 at 299 x 299: its factorised 7x7 and 3x3 windows (Mixed_6b/6c on
    # 17 x 17, Mixed_7b on 8 x 8)
    "inception_v3": (
        _window("Mixed_6b.branch7x7_2", 128, 17, 128, 1, 7),
        _window("Mixed_6b.branch7x7_3", 128, 17, 192, 7, 1),
        _window("Mixed_6c.branch7x7_2", 160, 17, 160, 1, 7),
        _window("Mixed_6c.branch7x7_3", 160, 17, 192, 7, 1),
        _window("Mixed_7b.branch3x3_2a", 384, 8, 384, 1, 3),
        _window("Mixed_7b.branch3x3_2b", 384, 8, 384, 3, 1),
    ),
    # torchvision's ResNeXt-50 32x4d: the grouped 3x3 of each stage (32 groups)
    "resnext50": (
        _conv("layer1.conv2", 128, 56, 128, 3, groups=32),
        _conv("layer2.0.conv2", 256, 56, 256, 3, 2, groups=32),
        _conv("layer2.conv2", 256, 28, 256, 3, groups=32),
        _conv("layer3.conv2", 512, 14, 512, 3, groups=32),
        _conv("layer4.conv2", 1024, 7, 1024, 3, groups=32),
    ),
    # ENet (Paszke et al., 2016) on 512 x 512 images: its initial block's 13 filters (their maps
    # joined by a max pool's 3), and its bottlenecks' windows on their 16 (stage 1, 128 x 128)
    # and 32 (stages 2-3, 64 x 64) internal channels, the factorised 5x1 and 1x5 among them
    "enet": (
        _conv("initial.conv", 3, 512, 13, 3, 2),
        _conv("bottleneck1.conv", 16, 128, 16, 3),
        _conv("bottleneck2.conv", 32, 64, 32, 3),
        _window("bottleneck2.asymmetric5x1", 32, 64, 32, 5, 1),
        _window("bottleneck2.asymmetric1x5", 32, 64, 32, 1, 5),
    ),
    "decoders": (
        _transposed("dcgan.main.0", 100, 1, 512, 4, 1),
        _transposed("dcgan.main.3", 512, 4, 256, 4, 2, 1),
        _transposed("dcgan.main.6", 256, 8, 128, 4, 2, 1),
        _transposed("dcgan.main.9", 128, 16, 64, 4, 2, 1),
        _transposed("dcgan.main.12", 64, 32, 3, 4, 2, 1),
        *_unet_up("unet.up1", 1024, 16),
        *_unet_up("unet.up2", 512, 32),
        *_unet_up("unet.up3", 256, 64),
        *_unet_up("unet.up4", 128, 128),
        _conv("unet.outc.conv", 64, 256, 2, 1),
        _conv("edsr.tail.1", 64, 96, 3, 3),
    ),
}
SUITE_NAMES = (*SUITES, "all")


def _shrunk(case: Case, batch: int | None) -> Case:
    """``case`` for --quick: batch 1 (LeNet-5's 8) unless ``batch``, images a quarter the size
    but no smaller than the window."""
    n, c, h, w = case.x
    # a batch norm's "window" is 2x2: more than one value per channel, which training needs
    window = max(case.w[2:]) if case.w is not None else case.kernel or 2
    size = min(h, max(h // QUICK_SIZE_DIVISOR, window))
    return dataclasses.replace(case, x=(batch or (8 if n == 256 else 1), c, size, size))


def cases(suite: str = "all", batch: int | None = None, quick: bool = False) -> list[Case]:
    """The cases of ``suite`` (a name of :data:`SUITES`, or "all"), each named
    "network/layer". ``batch`` sets every batch size; ``quick`` shrinks them for a smoke run."""
    if suite not in SUITE_NAMES:
        raise ValueError(f"suite must be one of {SUITE_NAMES}, got {suite!r}")
    chosen = [dataclasses.replace(c, name=f"{network}/{c.name}")
              for network, layers in SUITES.items() if suite in (network, "all") for c in layers]
    if quick:
        return [_shrunk(c, batch) for c in chosen]
    return [dataclasses.replace(c, x=(batch, *c.x[1:])) if batch else c for c in chosen]


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


def baselines(on: str = "cpu", numpy: bool = True) -> tuple[str, ...]:
    """The baselines that run on device ``on`` (the NumPy one only if ``numpy``)."""
    if on == "cpu":
        return ("numpy",) * numpy + ("torch",) * has_torch()
    return ("torch",) if has_torch_cuda() else ()


def impls(op: str, on: str = "cpu", numpy: bool = True) -> tuple[str, ...]:
    """Implementations benchmarked for ``op`` on device ``on``: fastconv's, then the baselines."""
    if op.removesuffix("_backward") in CONVS:
        ours = (*(a for a in ops.algorithms(on) if a != dispatch.REFERENCE), "auto")
    else:
        ours = ("fastconv",)
    return ours + baselines(on, numpy)


def serves(case: Case, op: str, impl: str, on: str = "cpu") -> bool:
    """Whether ``impl`` computes ``op`` (one of :func:`directions`) of ``case``: a conv
    algorithm for some layers only (winograd, depthwise: registry.refusal) runs on those
    alone, and a backward only where it has every conv op; anything else always."""
    if case.op not in CONVS or impl in (*BASELINES, "auto"):
        return True
    conv_ops = (("conv2d",) if op == "conv2d" else ("conv2d_backward_input",)
                if op == "conv_transpose2d" else registry.CONV_OPS)
    g = case.as_conv2d().geometry()
    return all(registry.refusal(o, device.parse(on), impl, g) is None for o in conv_ops)


def inputs(case: Case, dtype, on: str = "cpu") -> dict:
    """Random x, w (conv) and the output gradient gy of ``case`` in ``dtype`` on device ``on``,
    from a fixed seed, each starting on a cache line as fastconv's and PyTorch's own layers'
    outputs do (NumPy's large arrays start 16 bytes past one; both frameworks read the same
    arrays)."""
    rng = np.random.default_rng(0)

    def normal(shape):
        return rng.standard_normal(shape, dtype, out=driver.aligned_empty(shape, dtype))
    arrays = {"x": normal(case.x)}
    if case.w is not None:
        arrays["w"] = normal(case.w)
    if case.op == "batch_norm2d":  # weight, bias and the running buffers
        c = case.x[1]
        arrays.update(weight=normal((c,)), bias=normal((c,)),
                      running_mean=np.zeros(c, dtype), running_var=np.ones(c, dtype))
    arrays["gy"] = normal(case.y_shape)
    return {name: device.to_device(a, on) for name, a in arrays.items()}


def runner(case: Case, op: str, impl: str, arrays: dict, on: str = "cpu") -> Callable[[], object]:
    """A call of ``impl`` computing ``op`` (one of :func:`directions`) on ``arrays`` on device
    ``on``, with all setup done, ready to be timed. It returns its results (an array, or the
    input and weight gradients), which the benchmark checks against PyTorch's."""
    if impl == "torch":
        return _torch_runner(case, op, arrays, on)
    if case.op in CONVS:
        return _conv_runner(case, op, dispatch.REFERENCE if impl == "numpy" else impl, arrays,
                            on)
    if case.op == "batch_norm2d":
        return _batch_norm_runner(op, impl, arrays, on)
    return _pool_runner(case, op, impl, arrays, on)


def _conv_runner(case, op, algo, a, on):
    """The op of fastconv.ops named ``op``, or its input and weight gradients together."""
    args = {"stride": case.stride, "padding": case.padding, "groups": case.groups, "algo": algo,
            "device": on}
    if op == case.op:
        forward = getattr(ops, op)
        return lambda: forward(a["x"], a["w"], **args)
    backward_input = getattr(ops, f"{case.op}_backward_input")
    backward_weight = getattr(ops, f"{case.op}_backward_weight")

    def backward():
        return (backward_input(a["gy"], a["w"], a["x"].shape, **args),
                backward_weight(a["gy"], a["x"], a["w"].shape, **args))
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


def _batch_norm_runner(op, impl, a, on):
    """Training's batch normalisation: the forward returns y (the running buffers move on
    every call, as in training), the backward (gx, gweight, gbias) from the forward's saved
    statistics."""
    parameters = a["weight"], a["bias"], a["running_mean"], a["running_var"]
    if impl == "numpy":  # the registered reference: the layout, then the arrays and the mode
        forward = dispatch.implementations("batch_norm2d", "cpu")[dispatch.REFERENCE]
        backward = dispatch.implementations("batch_norm2d_backward", "cpu")[dispatch.REFERENCE]
        _, mean, invstd = forward("NCHW", a["x"], *parameters, True, True, 0.1, 1e-5)
        if op == "batch_norm2d":
            return lambda: forward("NCHW", a["x"], *parameters, True, True, 0.1, 1e-5)[0]
        return lambda: backward("NCHW", a["gy"], a["x"], a["weight"], mean, invstd, True)
    _, mean, invstd = ops.batch_norm2d(a["x"], *parameters, True, device=on)
    if op == "batch_norm2d":
        return lambda: ops.batch_norm2d(a["x"], *parameters, True, device=on)[0]
    return lambda: ops.batch_norm2d_backward(a["gy"], a["x"], a["weight"], mean, invstd,
                                             device=on)


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
    tensors = [wrap(a[name]) for name in ("x", "w", "weight", "bias") if name in a]
    if case.op == "batch_norm2d":
        buffers = wrap(a["running_mean"]), wrap(a["running_var"])

        def forward(x, weight, bias):
            return F.batch_norm(x, *buffers, weight, bias, training=True)
    elif case.op in CONVS:
        conv = getattr(F, case.op)

        def forward(x, w):
            return conv(x, w, stride=case.stride, padding=case.padding, groups=case.groups)
    else:
        pool = getattr(F, case.op)

        def forward(x):
            return pool(x, case.kernel, case.stride, case.padding)
    if op == case.op:
        def run():
            with torch.no_grad():
                return forward(*tensors)
        return run
    leaves = [t.detach().requires_grad_() for t in tensors]  # x's gradient, the weights'
    y, gy = forward(*leaves), wrap(a["gy"])
    return lambda: torch.autograd.grad(y, leaves, gy, retain_graph=True)


def work(case: Case, op: str, arrays: dict) -> tuple[float | None, float | None]:
    """(flops, bytes) of one call of ``op``: flops for a convolution (its backward computes the
    input and the weight gradient, each as costly as the forward; a transposed one costs what
    the conv2d whose input gradient it is costs), the bytes read and written for a pooling or a
    batch normalisation (at least: x and y forward, gy, x and gx backward)."""
    if case.op in CONVS:
        return case.as_conv2d().geometry().flops * (1 if op == case.op else 2), None
    x, gy = arrays["x"], arrays["gy"]
    if case.op == "batch_norm2d":
        return None, x.nbytes * (2 if op == case.op else 3)
    reads_x_twice = op == "max_pool2d_backward"  # reads x and gy, writes gx
    return None, x.itemsize * ((2 if reads_x_twice else 1) * x.size + gy.size)
