"""Loaded at start-up by a Python whose path begins here (tests/test_avx2_host.py): llvmlite
reports the host CPU without its AVX-512 features, so fastconv sizes its register tiles for
AVX2 (8 float32 lanes) and, with NUMBA_CPU_NAME=haswell, Numba compiles them for it."""

from llvmlite import binding

_host_features = binding.get_host_cpu_features


def _without_avx512():
    features = _host_features()
    for name in list(features):
        if name.startswith("avx512"):
            features[name] = False
    return features


binding.get_host_cpu_features = _without_avx512
