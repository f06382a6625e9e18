#!/usr/bin/env bash
# The one command to run first whenever a GPU is available:
#
#     bash benchmarks/gpu_check.sh [--smoke] OUT_DIR
#
# Each step runs under its own timeout and writes its results into OUT_DIR as soon as it ends,
# so a run cut short still returns what it did (six files at most: summary.md, steps.log,
# tests.log, bench-cuda.md, gemm.md, cpu-threads.md). In order: the project installed from this
# tree without the network (fastconv.kernels exists only once installed); the versions and the
# GPU; the GPU tests (pytest -m gpu: every op on CuPy arrays against the float64 reference, the
# table of refusals on CuPy arrays, PyTorch's OpInfo samples on CUDA tensors against PyTorch's
# CUDA ops) through the direct launch (FASTCONV_CUDA_LAUNCH=direct, kernels/cuda_device.py),
# which the later steps keep only if they pass; every conv algorithm against cuDNN on
# ResNet-18's layers (FP32, TF32 off, CUDA events); the GEMM kernel against cuBLAS at 4096^3;
# the host time of small calls through either launch (benchmarks/host_overhead.py); a LeNet-5
# epoch of fastconv and of PyTorch on the GPU (benchmarks/compare_training.py, data from
# FASTCONV_DATA), then ResNet-20 on 12,800 images (its recipe, 200 steps each: the speed and
# that it trains; its 10-epoch accuracy needs more than this budget); last and optional, the
# CPU layer suite at 1/2/4/8/16 threads. The steps stop starting once BUDGET seconds (default
# 300) would be passed; steps whose names match the regex SKIP_STEPS are left out (a rerun
# leaving out what came back already). summary.md has a row per step: its exit status,
# seconds, and file.
#
# --smoke runs the same steps end to end in Numba's CUDA simulator on tiny sizes (CI runs it):
# what needs a real GPU (cuDNN, cuBLAS, CUDA events, the GPU tests) reports SKIPPED with why,
# the bench runs LeNet-5's first layers and the training one step (benchmarks/launches.py): the
# simulator runs each GPU thread in Python (C5 alone would take it minutes, an epoch hours).
set -u

SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
OUT=${1:?usage: bash benchmarks/gpu_check.sh [--smoke] OUT_DIR}
BUDGET=${BUDGET:-300}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
if ((SMOKE)); then export NUMBA_ENABLE_CUDASIM=1; fi

SUMMARY="$OUT/summary.md"
LOG="$OUT/steps.log"
{
    echo "# GPU check ($(date -u '+%Y-%m-%d %H:%M UTC')$( ((SMOKE)) && echo ', --smoke: the CUDA simulator'))"
    echo
    echo "| step | status | seconds | output |"
    echo "|---|---|--:|---|"
} > "$SUMMARY"
: > "$LOG"

# step NAME TIMEOUT FILE COMMAND...: run COMMAND under TIMEOUT seconds, its output appended to
# FILE (in OUT), and a row in the summary; skipped when it could pass the budget.
step() {
    local name=$1 limit=$2 file=$3
    shift 3
    if [[ -n "${SKIP_STEPS:-}" && $name =~ $SKIP_STEPS ]]; then
        skip "$name" "SKIP_STEPS='$SKIP_STEPS'"
        return
    fi
    if ((SECONDS + limit > BUDGET)); then
        skip "$name" "out of the ${BUDGET} s budget (${SECONDS} s spent)"
        return
    fi
    local start=$SECONDS
    echo "=== $name: $*" >> "$OUT/$file"
    timeout "$limit" "$@" >> "$OUT/$file" 2>&1
    local rc=$? status
    LAST_RC=$rc
    case $rc in
        0) status=ok ;;
        124) status="TIMED OUT after ${limit} s" ;;
        *) status="FAILED ($rc)" ;;
    esac
    echo "| $name | $status | $((SECONDS - start)) | $file |" >> "$SUMMARY"
    echo "$name: $status"
}

skip() {
    echo "| $1 | SKIPPED: $2 | | |" >> "$SUMMARY"
    echo "$1: SKIPPED: $2"
}

versions() {
    "$PY" -m pip list 2>/dev/null | grep -iE "^(numba|cupy|torch|numpy|scipy|nvidia-cuda)" || true
    command -v nvidia-smi > /dev/null && nvidia-smi -L
    "$PY" -m fastconv info
}

export PY
step "install from the tree, no network" 90 steps.log \
    "$PY" -m pip install -q --no-deps --no-build-isolation -e .
step "versions and devices" 60 steps.log bash -c "$(declare -f versions); versions"
# The direct launch (kernels/cuda_device.py) goes first: the steps after the tests keep it only
# if every GPU test passes through it, and fall back to Numba's dispatcher otherwise.
export FASTCONV_CUDA_LAUNCH=${FASTCONV_CUDA_LAUNCH:-direct}
LAST_RC=0
step "GPU tests (pytest -m gpu), FASTCONV_CUDA_LAUNCH=$FASTCONV_CUDA_LAUNCH" 150 tests.log \
    "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu.py tests/test_docs.py \
    tests/test_torch_ops.py
if ((LAST_RC)) && [[ $FASTCONV_CUDA_LAUNCH == direct ]]; then
    export FASTCONV_CUDA_LAUNCH=numba
    skip "the direct launch" "its GPU tests failed: the steps below launch through Numba"
fi

if ((SMOKE)); then
    step "conv algorithms against cuDNN" 120 steps.log "$PY" -m fastconv bench \
        --device cuda --suite lenet5 --layers c1,s2.max,s2.avg,c3 --quick --batch 1 --repeats 1 \
        --no-numpy --impls direct,im2col,fastconv \
        --markdown "$OUT/bench-cuda.md"
    skip "GEMM against cuBLAS" "cuBLAS needs a real GPU (the GEMM kernel itself ran in the step above)"
else
    step "conv algorithms against cuDNN" 120 steps.log "$PY" -m fastconv bench \
        --device cuda --suite resnet18 --no-numpy --repeats 20 --markdown "$OUT/bench-cuda.md"
    step "GEMM against cuBLAS" 30 steps.log "$PY" -m fastconv bench --device cuda \
        --suite lenet5 --impls auto --no-numpy --repeats 3 --gemm 4096 --markdown "$OUT/gemm.md"
fi

if ((SMOKE)); then  # the simulator's kernels are slow Python: two calls of each
    step "host time of small calls" 60 steps.log "$PY" benchmarks/host_overhead.py \
        --device cuda --calls 2 --repeats 1
else
    for launch in numba direct; do
        step "host time of small calls, FASTCONV_CUDA_LAUNCH=$launch" 30 steps.log \
            env FASTCONV_CUDA_LAUNCH=$launch "$PY" benchmarks/host_overhead.py --device cuda
    done
fi

if ((SMOKE)); then  # an epoch takes the simulator hours: one training step, its launches counted
    step "LeNet-5 training step on the GPU" 90 steps.log "$PY" benchmarks/launches.py --batch 2
elif [[ -z "${FASTCONV_DATA:-}" || ! -d "${FASTCONV_DATA:-}" ]]; then
    skip "LeNet-5 epoch on the GPU" "FASTCONV_DATA is not a data folder"
else
    step "LeNet-5 epoch on the GPU: fastconv" 90 steps.log "$PY" benchmarks/compare_training.py \
        --device cuda --framework fastconv --epochs 2 --data "$FASTCONV_DATA"
    step "LeNet-5 epoch on the GPU: PyTorch" 60 steps.log "$PY" benchmarks/compare_training.py \
        --device cuda --framework torch --epochs 2 --data "$FASTCONV_DATA"
    for framework in fastconv torch; do
        step "ResNet-20, 200 steps on the GPU: $framework" 60 steps.log "$PY" \
            benchmarks/compare_training.py --model resnet20 --device cuda --framework "$framework" \
            --epochs 1 --limit 12800 --data "$FASTCONV_DATA"
    done
fi

if ((SMOKE)); then
    step "CPU layer suite by threads" 60 steps.log env -u NUMBA_ENABLE_CUDASIM "$PY" -m \
        fastconv bench --suite lenet5 --quick --threads 1,2 --no-numpy --impls auto,torch \
        --markdown "$OUT/cpu-threads.md"
else
    step "CPU layer suite by threads" 120 steps.log "$PY" -m fastconv bench \
        --suite resnet18 --threads 1,2,4,8,16 --no-numpy --impls auto,torch --repeats 5 \
        --markdown "$OUT/cpu-threads.md"
fi

echo "summary: $SUMMARY"
! grep -qE "FAILED|TIMED OUT" "$SUMMARY"
