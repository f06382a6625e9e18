"""The one registry of implementations, and how algo="auto" picks among them.

Every implementation is registered under (op, device, algo). ``algo="auto"`` asks the device's
heuristic, or, with autotuning on (``fastconv.autotune(True)`` or ``FASTCONV_AUTOTUNE=1``), times
every candidate once per shape signature and keeps the winner in a JSON cache under
``FASTCONV_CACHE_DIR`` (default ``~/.cache/fastconv``). The baseline algo "reference" is never
chosen by "auto"; it exists to be compared against.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from types import MappingProxyType

REFERENCE = "reference"
CACHE_FORMAT = "fastconv-autotune/1"

_registry: dict[tuple[str, str], dict[str, object]] = {}  # (op, device) -> {algo: fn}
_heuristics: dict[tuple[str, str], object] = {}
_autotune: bool | None = None  # None: follow FASTCONV_AUTOTUNE


def register(op: str, device: str, algo: str):
    """Decorator: make ``fn`` the implementation of ``op`` on ``device`` under ``algo``."""
    def deco(fn):
        _registry.setdefault((op, device), {})[algo] = fn
        return fn
    return deco


def heuristic(op: str, device: str):
    """Decorator: ``fn(geometry) -> algo`` is what algo="auto" picks without autotuning."""
    def deco(fn):
        _heuristics[(op, device)] = fn
        return fn
    return deco


def implementations(op: str, device: str) -> dict:
    """``{algo: fn}`` of every implementation of ``op`` on ``device``, in registration order
    (a read-only view)."""
    return MappingProxyType(_registry.get((op, device), {}))


def algorithms(device: str = "cpu") -> tuple[str, ...]:
    """The names accepted by ``algo=`` of the conv ops on ``device``."""
    return tuple(implementations("conv2d", device))


def autotune(enabled: bool = True) -> None:
    """Turn autotuning of algo="auto" on or off for this process."""
    global _autotune
    _autotune = bool(enabled)


def autotuning() -> bool:
    if _autotune is not None:
        return _autotune
    return os.environ.get("FASTCONV_AUTOTUNE", "0").lower() not in ("", "0", "false", "no")


def cache_path() -> Path:
    root = os.environ.get("FASTCONV_CACHE_DIR") or Path.home() / ".cache" / "fastconv"
    return Path(root) / "autotune.json"


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring unreadable autotune cache {path}: {err}", stacklevel=4)
        return {}
    if not (isinstance(data, dict) and data.get("format") == CACHE_FORMAT
            and isinstance(data.get("entries"), dict)
            and all(isinstance(v, str) for v in data["entries"].values())):
        warnings.warn(f"ignoring autotune cache {path}: not a {CACHE_FORMAT} file", stacklevel=4)
        return {}
    return data["entries"]


def _store_cache(path: Path, entries: dict) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"format": CACHE_FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _time(fn, run, repeats: int = 3) -> float:
    run(fn)  # compiles and warms caches, outside the timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(fn)
        best = min(best, time.perf_counter() - start)
    return best


def _autotuned(op, device, candidates, signature, run):
    path = cache_path()
    entries = _load_cache(path)
    key = f"{device}|{op}|{signature()}"
    if entries.get(key) not in candidates:
        times = {algo: _time(fn, run) for algo, fn in candidates.items()}
        entries[key] = min(times, key=times.get)
        try:
            _store_cache(path, entries)
        except OSError as err:
            warnings.warn(f"cannot write autotune cache {path}: {err}; the choice is not kept",
                          stacklevel=4)
    return entries[key]


def select(op: str, device: str, algo: str, geometry, signature, run):
    """The implementation of ``op`` for ``algo``; "auto" resolves by autotuning or heuristic.

    ``run(fn)`` calls a candidate on the real arguments; it is used only when autotuning.
    ``signature()`` identifies the shapes, dtype and machine in the autotune cache (called only
    when autotuning).
    """
    impls = implementations(op, device)
    if algo != "auto":
        return impls[algo]
    candidates = {a: fn for a, fn in impls.items() if a != REFERENCE}
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    if autotuning():
        return candidates[_autotuned(op, device, candidates, signature, run)]
    return candidates[_heuristics[(op, device)](geometry)]
