"""The benchmark's suites: every distinct conv and pooling layer of LeNet-5, ResNet-18,
ResNet-50, MobileNetV2 and VGG-16 and ResNet-18's batch normalisations, the transposed
convolutions of the DCGAN generator and a U-Net's decoder, each a valid layer at full size and
in --quick's shrunk one; and a smoke run of every suite whose results match PyTorch's (the
timings are not checked)."""

import numpy as np
import pytest

from fastconv import bench, runtime

TORCH = pytest.importorskip("torch", reason="the smoke run checks results against PyTorch")


@pytest.mark.parametrize("suite", list(bench.SUITES))
def test_every_layer_is_valid_and_named_once(suite):
    full, quick = bench.cases(suite), bench.cases(suite, quick=True)
    assert len(full) == len(quick) > 0
    assert len({c.name for c in full}) == len(full)
    assert all(c.name.startswith(f"{suite}/") for c in full)
    for case in full + quick:
        assert len(case.y_shape) == 4  # raises for a layer that does not fit
    assert all(q.x[0] in (1, 8) and q.x[2] <= f.x[2] for q, f in zip(quick, full, strict=True))


def test_the_suites_cover_what_the_layers_of_real_networks_need():
    convs = [c for c in bench.cases("all") if c.op == "conv2d"]
    assert any(c.w[2] == 7 and c.stride == 2 for c in convs)  # a 7x7 stem
    assert any(c.groups == c.x[1] > 1 for c in convs)  # depthwise
    assert any(c.w[2] == 1 and c.stride == 2 for c in convs)  # strided 1x1 shortcuts
    assert any(c.w[2] == 3 and c.stride == 2 for c in convs)
    transposed = [c for c in bench.cases("all") if c.op == "conv_transpose2d"]
    assert any(c.x[2] == 1 for c in transposed)  # DCGAN's projection of the noise
    assert any(c.w[2] == 4 and c.stride == 2 and c.padding == 1 for c in transposed)
    assert any(c.w[2] == c.stride == 2 for c in transposed)  # U-Net's upsampling
    assert {c.x[0] for c in bench.cases("all")} == {bench.BATCH, bench.TRAIN_BATCH, 256}
    assert {c.x[0] for c in bench.cases("all", batch=3)} == {3}


def test_a_transposed_convolution_is_timed_as_the_conv2d_whose_input_gradient_it_is():
    transposed = [c for c in bench.cases("all") if c.op == "conv_transpose2d"]
    for case in transposed:
        conv = bench.Case("conv", "conv2d", case.y_shape, case.w, stride=case.stride,
                          padding=case.padding)
        assert conv.y_shape == case.x
        assert ([bench.work(case, op, {}) for op in bench.directions(case)]
                == [bench.work(conv, op, {}) for op in bench.directions(conv)])
    assert bench.impls("conv_transpose2d_backward") == bench.impls("conv2d_backward")


@pytest.mark.slow
@pytest.mark.parametrize("suite", list(bench.SUITES))
def test_a_quick_run_of_every_suite_matches_pytorch(suite):
    rows = bench.run(bench.cases(suite, quick=True), np.float32, repeats=1, progress=False,
                     numpy=False, sgemm=bench.sgemm_gflops(256, repeats=1))
    checked = [r for r in rows if r["impl"] != "torch"]
    assert checked and all(r["rel_error"] < 1e-4 for r in checked), max(
        checked, key=lambda r: r["rel_error"])
    assert all(r["threads"] == runtime.get_num_threads() for r in rows)
    assert all(r["pct_sgemm"] > 0 for r in rows if r["op"].startswith("conv"))
