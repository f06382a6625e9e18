"""The one registry of implementations: every op's implementations on every device, and the
CUDA kernels each one launches.

An implementation is registered under (op, device, algo) by the op family's module in
:mod:`fastconv.implementations`; a CUDA implementation names the kernels it launches, as
``"module.kernel"`` in :mod:`fastconv.kernels`. That list is what the PTX compile sweep, the
launch counter (benchmarks/launches.py) and ``fastconv info`` read. Reading it needs neither
CuPy nor a GPU: :func:`cuda_kernels` imports the kernel modules, which needs numba-cuda.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType

REFERENCE = "reference"
CONV_OPS = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")

_implementations: dict[tuple[str, str], dict[str, object]] = {}  # (op, device) -> {algo: fn}
_launches: dict[tuple[str, str, str], tuple[str, ...]] = {}  # (op, device, algo) -> kernels
_heuristics: dict[tuple[str, str], object] = {}  # (op, device) -> fn(op, geometry) -> algo
_applies: dict[tuple[str, str, str], object] = {}  # (op, device, algo) -> fn(geometry) -> why not


def register(op: str, device: str, algo: str, launches: tuple[str, ...] = (), applies=None):
    """Decorator: make ``fn`` the implementation of ``op`` on ``device`` under ``algo``;
    ``launches`` names the CUDA kernels it may launch ("module.kernel"); ``applies(geometry)``,
    for an implementation that serves some layers only, says why it cannot serve one (a
    sentence naming the layer) or returns None where it can."""
    def deco(fn):
        _implementations.setdefault((op, device), {})[algo] = fn
        _launches[(op, device, algo)] = tuple(launches)
        if applies is not None:
            _applies[(op, device, algo)] = applies
        return fn
    return deco


def refusal(op: str, device: str, algo: str, geometry) -> str | None:
    """Why ``algo`` cannot compute ``op`` on ``device`` for ``geometry`` (it has no such
    implementation, or its ``applies`` rule refuses the layer), or None where it can."""
    if algo not in _implementations.get((op, device), {}):
        served = [o for (o, d), algos in _implementations.items() if d == device and algo in algos]
        return f"algo={algo!r} has no {op} on {device} (it computes {', '.join(served)})"
    applies = _applies.get((op, device, algo))
    return None if applies is None else applies(geometry)


def general(device: str, ops=CONV_OPS) -> tuple[str, ...]:
    """The algos that compute every op of ``ops`` on ``device`` for every layer (none of them
    has an ``applies`` rule): those a test or a benchmark may run on any geometry."""
    first, *rest = (implementations(op, device) for op in ops)
    return tuple(a for a in first if all(a in impls for impls in rest)
                 and not any((op, device, a) in _applies for op in ops))


def heuristic(device: str, ops=CONV_OPS):
    """Decorator: ``fn(op, geometry) -> algo`` is what algo="auto" picks for ``ops`` on
    ``device`` without autotuning: one rule per device."""
    def deco(fn):
        for op in ops:
            _heuristics[(op, device)] = fn
        return fn
    return deco


def implementations(op: str, device: str) -> MappingProxyType:
    """``{algo: fn}`` of every implementation of ``op`` on ``device``, in registration order
    (a read-only view)."""
    return MappingProxyType(_implementations.get((op, device), {}))


def choose(op: str, device: str, geometry) -> str:
    """The heuristic's algo for ``op`` on ``device``."""
    return _heuristics[(op, device)](op, geometry)


def launches(op: str, device: str, algo: str) -> tuple[str, ...]:
    """The CUDA kernels ("module.kernel") the implementation may launch."""
    return _launches[(op, device, algo)]


def entries():
    """Every registered (op, device, algo), in registration order."""
    return tuple(_launches)


def cuda_kernels() -> dict:
    """``{"module.kernel": kernel}`` of every CUDA kernel an implementation launches, its
    module imported (this needs numba-cuda, not CuPy or a GPU)."""
    names = dict.fromkeys(name for kernels in _launches.values() for name in kernels)
    found = {}
    for name in names:
        module, _, kernel = name.partition(".")
        found[name] = getattr(importlib.import_module(f"fastconv.kernels.{module}"), kernel)
    return found
