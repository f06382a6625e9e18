"""The static CUDA kernel report (fastconv.bench.kernels): occupancy arithmetic against the
CUDA occupancy rules, the launchers' block sizes, and one kernel read end to end through
numba-cuda, ptxas and nvdisasm (no GPU)."""

import os

import pytest

from fastconv.bench import kernels

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("compile_ptx does not work in the CUDA simulator", allow_module_level=True)
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")


@pytest.mark.parametrize("registers, shared, threads, cc, want", [
    (32, 0, 256, (9, 0), 1.0),        # 8 blocks of 8 warps
    (162, 0, 256, (9, 0), 0.125),     # 168 a thread: one block of 8 warps (the GEMM)
    (64, 0, 64, (9, 0), 0.5),         # 16 blocks of 2 warps by registers
    (40, 2048, 256, (9, 0), 0.75),    # 6 blocks: 40 regs round to 40 x 32 = 1280 a warp
    (16, 48 * 1024, 128, (8, 0), 3 * 4 / 64),  # shared memory: 164 KiB / 49 KiB = 3 blocks
])
def test_occupancy_follows_the_cuda_rules(registers, shared, threads, cc, want):
    assert kernels.occupancy(registers, shared, threads, cc) == pytest.approx(want)


def test_block_sizes_come_from_the_launchers():
    assert kernels.launched_threads("pool_cuda.max_pool2d_forward") == 64  # block=(8, 8)
    assert kernels.launched_threads("gemm_cuda.gemm") == 256  # launched with THREADS
    assert kernels.launched_threads("batch_norm_cuda.batch_norm_forward") == 256  # at most
    assert kernels.launched_threads("conv_direct_cuda.conv2d_forward_nchw_tiled") == 64


def test_one_kernel_end_to_end():
    if kernels.tool("ptxas") is None or kernels.tool("nvdisasm") is None:
        pytest.skip("ptxas or nvdisasm is missing: pip install nvidia-cuda-nvcc "
                    "nvidia-cuda-nvdisasm (the dev extra has them; CI installs it)")
    (row,) = kernels.reports(ccs=((9, 0),), dtypes=("float32",),
                             names=["batch_norm_cuda.batch_norm_backward"])
    assert 16 <= row.registers <= 255 and row.spill_bytes == 0
    assert row.shared_bytes == 256 * 8  # the float64 reduction array
    assert row.threads == 256 and 0 < row.occupancy <= 1
    assert row.instructions > row.loop_instructions > 0 and row.global_loads > 0
    table = kernels.markdown([row])
    assert "| batch_norm_cuda.batch_norm_backward | float32 | sm_90 |" in table
