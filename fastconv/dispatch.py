"""How a call picks its implementation from the registry (:mod:`fastconv.registry`).

``algo="auto"`` asks the device's heuristic, or, with autotuning on (``fastconv.autotune(True)``
or ``FASTCONV_AUTOTUNE=1``), times every candidate once per shape signature and keeps the winner
in a JSON cache under ``FASTCONV_CACHE_DIR`` (default ``~/.cache/fastconv``). The baseline algo
"reference" is never chosen by "auto"; it exists to be compared against.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

from . import device as devices
from . import implementations as _registering  # noqa: F401  (importing registers them all)
from . import runtime
from .registry import REFERENCE, choose, implementations, refusal

CACHE_FORMAT = "fastconv-autotune/1"

_autotune: bool | None = None  # None: follow FASTCONV_AUTOTUNE


def algorithms(device="cpu") -> tuple[str, ...]:
    """The names ``algo=`` of the conv ops accepts on ``device`` ("cpu", "cuda" or "cuda:N");
    a RuntimeError names what is missing where the CUDA backend cannot load."""
    return tuple(implementations("conv2d", devices.parse(device)))


def autotune(enabled: bool = True) -> None:
    """Turn autotuning of algo="auto" on or off for this process."""
    global _autotune
    _autotune = bool(enabled)


def autotuning() -> bool:
    if _autotune is not None:
        return _autotune
    return os.environ.get("FASTCONV_AUTOTUNE", "0").lower() not in ("", "0", "false", "no")


def cache_path() -> Path:
    return runtime.cache_dir() / "autotune.json"


def _load_cache(path: Path, warn: bool = True) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        if warn:
            warnings.warn(f"ignoring unreadable autotune cache {path}: {err}", stacklevel=4)
        return {}
    if not (isinstance(data, dict) and data.get("format") == CACHE_FORMAT
            and isinstance(data.get("entries"), dict)
            and all(isinstance(v, str) for v in data["entries"].values())):
        if warn:
            warnings.warn(f"ignoring autotune cache {path}: not a {CACHE_FORMAT} file",
                          stacklevel=4)
        return {}
    return data["entries"]


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` among the processes writing into it (flock on the folder
    itself, so no lock file is left behind; no lock where the OS has no flock)."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _store_cache(path: Path, entries: dict) -> None:
    """Merge ``entries`` into the file, under the folder's lock so that concurrent writers keep
    each other's entries, and atomically: a reader sees the old file or the new one, never half
    of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        merged = {**_load_cache(path, warn=False), **entries}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".autotune-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": CACHE_FORMAT, "entries": merged}, f, indent=1,
                          sort_keys=True)
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


# This process's choices, per cache file: {path: {key: algo}}. Looked up first, so a call costs
# the same whether or not the file can be written, and the file is read once per new key.
_choices: dict[Path, dict[str, str]] = {}
_unwritable: set[Path] = set()  # files whose write failed, warned about once


def _autotuned(op, device, candidates, signature, run):
    path = cache_path()
    key = f"{device}|{op}|{signature()}"
    known = _choices.setdefault(path, {})
    if known.get(key) in candidates:
        return known[key]
    saved = _load_cache(path).get(key)
    if saved in candidates:
        known[key] = saved
        return saved
    times = {algo: _time(fn, run) for algo, fn in candidates.items()}
    known[key] = min(times, key=times.get)
    try:
        _store_cache(path, known)  # with the choices an earlier failed write could not keep
        _unwritable.discard(path)
    except OSError as err:
        if path not in _unwritable:
            _unwritable.add(path)
            warnings.warn(f"cannot write autotune cache {path}: {err}; this process keeps its "
                          "choices in memory", stacklevel=4)
    return known[key]


def select(op: str, device: str, algo: str, geometry, signature, run):
    """The implementation of ``op`` for ``algo``; "auto" resolves by autotuning or heuristic.

    ``run(fn)`` calls a candidate on the real arguments; it is used only when autotuning.
    ``signature()`` identifies the shapes, dtype and machine in the autotune cache (called only
    when autotuning).
    """
    impls = implementations(op, device)
    if algo != "auto":
        why = refusal(op, device, algo, geometry)  # an algo for some layers only, elsewhere
        if why is not None:
            raise ValueError(why)
        return impls[algo]
    tuning = autotuning()
    key = (op, device, geometry, runtime.get_num_threads())
    picked = None if tuning else _picked.get(key)
    if picked is not None:
        return impls[picked]
    candidates = {a: fn for a, fn in impls.items()
                  if a != REFERENCE and refusal(op, device, a, geometry) is None}
    if len(candidates) == 1:
        picked = next(iter(candidates))
    elif tuning:
        return candidates[_autotuned(op, device, candidates, signature, run)]
    else:
        picked = choose(op, device, geometry)
    if len(_picked) >= PICKED_KEPT:
        _picked.clear()
    _picked[key] = picked
    return candidates[picked]


# The heuristic's picks in this process, {(op, device, geometry, threads): algo}: asking every
# algorithm whether it serves the layer and walking the rule cost ~4 us a call, a quarter of a
# small conv's host time; a training step asks the same few layers again and again. The names
# are kept, not the functions, so the registry's current entries always run; a test that
# plants a rule swaps in an empty dict (monkeypatch) for the test's length.
_picked: dict[tuple, str] = {}
PICKED_KEPT = 4096  # forgotten all at once past this many layers (a sweep over shapes)
