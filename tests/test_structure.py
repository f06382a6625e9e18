"""The package's shape: no import cycle among fastconv's modules, and a fresh process answers
"which algorithms run on cuda" one way through every door."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"fastconv": ROOT / "fastconv", "fastconv.kernels": ROOT / "kernels"}


def _modules():
    """{module name: path} of every module of fastconv (kernels/ installs as fastconv.kernels)."""
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def _imports(name, path, modules):
    """The fastconv modules ``name`` imports, anywhere in its file (function-level imports and
    lazy("...") loads included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()

    def add(target):
        while target and target not in modules:  # an imported name: its module
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                add(f"{base}.{alias.name}")
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy"
              and node.args and isinstance(node.args[0], ast.Constant)):
            add(node.args[0].value)
    return edges


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "fastconv.cuda" in graph["fastconv.device"]  # the graph sees function-level imports
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.slow
def test_algorithms_on_cuda_answer_alike_in_a_fresh_process():
    """fastconv.algorithms and ops.algorithms are one function: with no CUDA backend both raise
    the RuntimeError naming what is missing (they once answered () and raised)."""
    code = ("import fastconv\n"
            "assert fastconv.algorithms is fastconv.ops.algorithms\n"
            "try:\n    print(fastconv.algorithms('cuda'))\n"
            "except RuntimeError as err:\n    print('RuntimeError', err)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("RuntimeError the CUDA backend needs"), run.stdout


@pytest.mark.slow
def test_importing_fastconv_loads_no_cuda_module():
    code = ("import sys, fastconv, fastconv.bench, fastconv.cli\n"
            "print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda', "
            "'cupy', 'fastconv.cuda')) or m.startswith('fastconv.kernels') and 'cuda' in m))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout
