"""What numbers were measured on: the CPU, its SIMD, the threads, the BLAS, malloc, the versions
and the GPU, for ``fastconv info`` and every benchmark's header."""

from __future__ import annotations

import importlib.metadata
import platform

from . import __version__, device, kernels, runtime


def versions() -> dict:
    """Versions of fastconv, Python and the libraries it runs with (torch if installed)."""
    found = {"fastconv": __version__, "python": platform.python_version()}
    for name in ("numpy", "numba", "scipy", "torch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def machine(on: str = "cpu") -> dict:
    """What the numbers were measured on: CPU, SIMD, threads, BLAS and versions, and the GPU
    and its versions when ``on`` is "cuda"."""
    blas = [f"{lib['internal_api']} {lib['version']} ({lib['architecture']}, "
            f"{lib['num_threads']} threads)" for lib in runtime.blas()]
    info = {"cpu": runtime.cpu_name(), "simd": runtime.simd_flags(), "vectors": kernels.vectors(),
            "threads": runtime.get_num_threads(), "cpus": runtime.cpu_count(),
            "blas": list(dict.fromkeys(blas)), "malloc": runtime.malloc(),
            "versions": versions()}
    if on == "cuda":
        info["gpu"] = device.cuda_backend().info()
    return info


def describe(info: dict) -> list[tuple[str, str]]:
    """``(label, text)`` lines describing a :func:`machine`, for headers and ``fastconv info``."""
    return [
        ("cpu", f"{info['cpu']} (SIMD: {' '.join(info['simd']) or 'none found'})"),
        ("vectors", info["vectors"]),
        ("threads", f"{info['threads']} (of {info['cpus']} CPUs)"),
        ("BLAS", "; ".join(info["blas"]) or "none found"),
        ("malloc", info["malloc"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())),
        *((("gpu", ", ".join(f"{k} {v}" for k, v in info["gpu"].items())),)
          if "gpu" in info else ()),
        *((("SGEMM", _sgemm(info)),) if info.get("sgemm") else ()),
        *((("WARNING", warning),) if "gpu" not in info
          and (warning := _shared_cpus(info.get("sgemm") or {})) else ()),
    ]


def _sgemm(info: dict) -> str:
    size = f"float32 {info.get('sgemm_size', 4096)}^3"
    if "gpu" in info:  # the GPU's rate, whatever the threads
        return (f"{next(iter(info['sgemm'].values())):.0f} GFLOP/s on the GPU ({size} through "
                "cuBLAS, CuPy's matmul, best of 3, measured in this run)")
    return ("; ".join(f"{rate:.0f} GFLOP/s on {threads} thread(s)"
                      for threads, rate in info["sgemm"].items())
            + f" ({size} through NumPy's BLAS, best of 3, measured in this run)")


def _shared_cpus(sgemm: dict) -> str | None:
    """A warning where the SGEMM rate grew less than 1.5x from one thread to two or more: other
    work shares these CPUs (a virtual machine's neighbour), and the figures of more threads
    measure it, not the kernels (benchmarks/results/cpu-suite.md, 2026-11-30)."""
    one = sgemm.get(1)
    more = {t: r for t, r in sgemm.items() if t > 1}
    if not one or not more:
        return None
    slow = [t for t, rate in more.items() if rate < 1.5 * one]
    if not slow:
        return None
    return (f"SGEMM on {', '.join(map(str, slow))} threads runs at most "
            f"{max(more[t] for t in slow) / one:.2f}x its one-thread rate: other work shares "
            "these CPUs, and the figures on more than one thread measure it")
