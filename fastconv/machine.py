"""What numbers were measured on: the CPU, its SIMD, the threads, the BLAS, malloc, the versions
and the GPU, for ``fastconv info`` and every benchmark's header."""

import importlib.metadata
import platform

from . import __version__, device, runtime


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
    info = {"cpu": runtime.cpu_name(), "simd": runtime.simd_flags(),
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
        ("threads", f"{info['threads']} (of {info['cpus']} CPUs)"),
        ("BLAS", "; ".join(info["blas"]) or "none found"),
        ("malloc", info["malloc"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())),
        *((("gpu", ", ".join(f"{k} {v}" for k, v in info["gpu"].items())),)
          if "gpu" in info else ()),
        *((("SGEMM", "; ".join(f"{rate:.0f} GFLOP/s on {threads} thread(s)"
                               for threads, rate in info["sgemm"].items())
            + " (float32 4096^3 through NumPy's BLAS, best of 3, measured in this run)"),)
          if info.get("sgemm") else ()),
    ]
