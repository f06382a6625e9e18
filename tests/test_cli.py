"""The ``fastconv`` command line: info, a tiny bench run and its output files, and its errors."""

import contextlib
import csv
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastconv import bench, cli, dispatch, machine, runtime
from fastconv.kernels import gemm


def _main(*argv):
    """Run ``fastconv argv`` in this process; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


def test_info_prints_algorithms_and_blas(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"cpu: {', '.join(dispatch.algorithms('cpu'))}" in out
    blas = next(line for line in out.splitlines() if line.startswith("BLAS: "))
    assert all(lib["internal_api"] in blas for lib in runtime.blas())
    assert f"products: {gemm.BLAS}" in out
    assert "cuda: " in out
    from fastconv.kernels import VECTOR_LANES
    assert f"vectors: {VECTOR_LANES * 32}-bit ({VECTOR_LANES} float32 lanes" in out


@pytest.mark.slow
def test_installed_script_runs():
    script = shutil.which("fastconv", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the fastconv script is not installed (pip install -e .)")
    done = subprocess.run([script, "info"], capture_output=True, text=True, check=True,
                          timeout=60)
    assert "algorithms:" in done.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``fastconv bench --quick --suite lenet5`` at batch 2, writing every output file."""
    folder = tmp_path_factory.mktemp("bench")
    suffixes = {"csv": "csv", "json": "json", "markdown": "md", "plot": "png"}
    files = {kind: folder / f"rows.{suffix}" for kind, suffix in suffixes.items()}
    options = [arg for kind, path in files.items() for arg in (f"--{kind}", str(path))]
    status, out, err = _main("bench", "--quick", "--suite", "lenet5", "--batch", "2",
                             "--repeats", "2", *options)
    assert status == 0
    return out, err, files


def _expected_rows():
    return {(op, case.name, impl) for case in bench.cases("lenet5")
            for op in bench.directions(case) for impl in bench.impls(op)
            if bench.serves(case, op, impl)}  # winograd and depthwise serve some layers only


def test_bench_prints_machine_and_a_row_per_op_shape_and_impl(quick_run):
    out, err, _ = quick_run
    lines = out.splitlines()
    assert lines[0].startswith("cpu: ") and any(line.startswith("BLAS: ") for line in lines)
    assert any(line.startswith("SGEMM: ") and "1024^3" in line for line in lines)  # --quick's
    table = lines[lines.index(next(x for x in lines if x.startswith("---"))) + 1:]
    assert {tuple(line.split()[:3]) for line in table} == _expected_rows()
    impls = {line.split()[2] for line in table}
    assert "numpy" in impls and ("torch" in impls) == bench.has_torch()
    assert "fastconv bench" in err  # the progress bar, on stderr


def test_bench_writes_csv_json_markdown_and_plot(quick_run):
    out, _, files = quick_run
    with open(files["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == bench.COLUMNS
    assert {(r["op"], r["shape"], r["impl"]) for r in rows} == _expected_rows()
    data = json.loads(files["json"].read_text())
    assert {"cpu", "simd", "threads", "blas", "versions"} <= set(data["machine"])
    assert [tuple(r) for r in data["rows"]] == [bench.COLUMNS] * len(rows)
    assert all(r["median_ms"] > 0 for r in data["rows"])
    markdown = files["markdown"].read_text()
    assert "| op | shape | impl | threads | median ms |" in markdown
    assert "- **BLAS**: " in markdown and "- **SGEMM**: " in markdown
    assert files["plot"].read_bytes().startswith(b"\x89PNG")


def test_bench_on_cuda_without_the_backend_says_what_is_missing(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cupy" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--device", "cuda"])
    assert exit_.value.code == 2
    assert "--device cuda: the CUDA backend needs cupy" in capsys.readouterr().err


def test_gemm_benchmark_needs_cuda(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--gemm", "64"])
    assert "--gemm needs --device cuda" in capsys.readouterr().err


def test_plot_without_matplotlib_says_what_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(SystemExit):
        cli.main(["bench", "--plot", str(tmp_path / "chart.png")])
    assert "pip install matplotlib" in capsys.readouterr().err


def test_bench_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    for option in ("--suite", "--layers", "--no-numpy", "--quick", "--batch", "--repeats",
                   "--numpy-repeats", "--dtype", "--threads", "--device", "--csv", "--json",
                   "--markdown", "--plot"):
        assert option in out


def test_measure_never_times_the_first_call():
    calls = []

    def compiles_first():
        time.sleep(0.2 if not calls else 0)
        calls.append(1)

    timing = bench.measure(compiles_first, repeats=3)
    assert len(calls) == 4 and timing.median < 0.1 and timing.repeats == 3


@pytest.mark.parametrize("bad", ["0", "1,x", "", "2,-1"])
def test_bench_threads_takes_a_list_of_positive_counts(bad, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--threads", bad])
    assert "expected thread counts such as 1,2" in capsys.readouterr().err


def test_bench_layers_runs_those_layers_alone():
    status, out, _ = _main("bench", "--quick", "--suite", "lenet5", "--layers", "c3,lenet5/s2.max",
                           "--impls", "direct,fastconv", "--no-numpy", "--repeats", "1")
    assert status == 0
    table = out.splitlines()[out.splitlines().index(next(
        x for x in out.splitlines() if x.startswith("---"))) + 1:]
    assert {tuple(line.split()[:3]) for line in table} == {
        ("conv2d", "lenet5/c3", "direct"), ("conv2d_backward", "lenet5/c3", "direct"),
        ("max_pool2d", "lenet5/s2.max", "fastconv"),
        ("max_pool2d_backward", "lenet5/s2.max", "fastconv")}


def test_bench_header_names_every_thread_count_of_the_run(tmp_path):
    """The header's threads are the run's, not the last count's (it said "1" of a 2,1 run)."""
    markdown = tmp_path / "rows.md"
    status, out, _ = _main("bench", "--quick", "--suite", "lenet5", "--layers", "lenet5/s2.max",
                           "--no-numpy", "--repeats", "1", "--threads", "2,1",
                           "--markdown", str(markdown))
    assert status == 0
    assert out.startswith("cpu: ") and "\nthreads: 2, 1 (of " in out
    assert "- **threads**: 2, 1 (of " in markdown.read_text()


def test_bench_layers_names_a_layer_the_suite_lacks(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--suite", "lenet5", "--layers", "c1,conv9"])
    assert exit_.value.code == 2
    assert "--layers: no layer conv9 in suite lenet5" in capsys.readouterr().err


@pytest.mark.parametrize("rates, warned", [({1: 133.0, 2: 141.0}, True),
                                           ({1: 126.0, 2: 246.0}, False),
                                           ({1: 126.0}, False), ({2: 246.0}, False)])
def test_bench_header_warns_when_more_threads_add_no_sgemm(rates, warned):
    """A stolen vCPU (SGEMM barely faster on two threads than on one) is said in the header:
    the multi-thread figures of such a run measure the neighbour, not the kernels."""
    lines = dict(machine.describe({**machine.machine(), "sgemm": rates}))
    assert ("WARNING" in lines) == warned
    if warned:
        assert "1.06x its one-thread rate" in lines["WARNING"]


def test_bench_header_on_a_gpu_gives_cublas_rate():
    """On a GPU the roofline is the GPU's SGEMM (cuBLAS), measured once whatever the threads:
    its rate neither reads as a CPU's nor trips the shared-CPU warning."""
    info = {**machine.machine(), "gpu": {"gpu": "NVIDIA H200"}, "sgemm": {1: 5e4, 2: 5e4}}
    lines = dict(machine.describe(info))
    assert lines["SGEMM"].startswith("50000 GFLOP/s on the GPU") and "cuBLAS" in lines["SGEMM"]
    assert "WARNING" not in lines
