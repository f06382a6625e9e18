"""ops.softmax_cross_entropy and F.cross_entropy, one kernel for the loss and its gradient,
against fastconv's float64 NumPy reference and PyTorch's float64 cross_entropy (autograd for
the gradient): hypothesis-drawn batches and class counts (one class and one row included), both
dtypes, the parallel kernel and its serial twin, non-finite logits, bad arguments and the
autograd node."""

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_kernel_ir import _llvm_ir

import oracle
from fastconv import ops, registry, tensor
from fastconv.implementations import driver
from fastconv.kernels import loss as loss_kernels
from fastconv.nn import functional as F
from oracle import random, tolerance

FLOATS = [np.float32, np.float64]


def _expected(logits, target):
    """{"reference": ..., "torch": ...}, each {"loss": 0-d, "grad": (N, C)} in float64."""
    reference = registry.implementations("softmax_cross_entropy", "cpu")["reference"]
    loss, grad = reference(np.asarray(logits, np.float64), target)
    x = torch.from_numpy(np.asarray(logits, np.float64)).requires_grad_()
    theirs = torch.nn.functional.cross_entropy(x, torch.from_numpy(np.asarray(target,
                                                                        np.int64)))
    theirs.backward()
    return {"reference": {"loss": loss, "grad": grad},
            "torch": {"loss": theirs.detach().numpy(), "grad": x.grad.numpy()}}


def _check(loss, grad, expected):
    """``loss`` and ``grad`` match both sources of ``expected`` within the tolerance of their
    dtype, measured against the scale each is computed to (by PyTorch as by the kernel): the
    loss to max(|loss|, 1), a log-sum-exp's absolute precision (log s with s >= 1); the
    gradient entry by entry to 1/N, the bound of every entry (p - 1 at a label cancels where p
    nears 1, so a batch whose rows are all well classified has a gradient far smaller than its
    rounding in norm-relative terms)."""
    loss, grad = np.asarray(loss), np.asarray(grad)
    tol = tolerance(grad.dtype)
    for source, want in expected.items():
        error = abs(float(loss) - float(want["loss"])) / max(abs(float(want["loss"])), 1.0)
        assert error < tol, f"loss against {source}: {error:.2e}"
        assert grad.shape == want["grad"].shape
        error = np.abs(grad - want["grad"]).max(initial=0.0) * len(grad)
        assert error < tol, f"grad against {source}: {error:.2e}"


def _parallel(monkeypatch, parallel):
    monkeypatch.setattr(driver, "SERIAL_WORK", 0 if parallel else 1 << 62)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 70), c=st.integers(1, 40), dtype=st.sampled_from(FLOATS),
       scale=st.sampled_from([1.0, 10.0, 1000.0]), parallel=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
@example(n=1, c=1, dtype=np.float32, scale=1.0, parallel=True, seed=0)
@example(n=1, c=5, dtype=np.float64, scale=1.0, parallel=False, seed=0)
@example(n=300, c=1, dtype=np.float64, scale=1.0, parallel=True, seed=0)
def test_loss_and_gradient_match_the_reference_and_torch(n, c, dtype, scale, parallel, seed,
                                                         monkeypatch):
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(seed)
    logits, target = random(rng, (n, c), dtype) * scale, rng.integers(0, c, n)
    before = logits.copy(), target.copy()
    loss, grad = ops.softmax_cross_entropy(logits, target)
    assert loss.shape == () and loss.dtype == dtype
    assert grad.shape == (n, c) and grad.dtype == dtype and np.isfinite(grad).all()  # poisoned
    _check(loss, grad, _expected(logits, target))
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(target, before[1])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
def test_the_cpu_kernel_runs_once_and_large_logits_do_not_overflow(dtype, parallel,
                                                                   monkeypatch, cpu_calls):
    _parallel(monkeypatch, parallel)
    rng = np.random.default_rng(3)
    big = 1e4 if dtype == np.float32 else 1e100  # exp overflows past 88 and 709
    logits = random(rng, (257, 11), dtype) * big
    target = rng.integers(0, 11, 257)
    loss, grad = ops.softmax_cross_entropy(logits, target)
    assert [kernel for kernel, _ in cpu_calls] == [loss_kernels.softmax_cross_entropy]
    assert np.isfinite(loss) and np.isfinite(grad).all()
    _check(loss, grad, _expected(logits, target))


@pytest.mark.parametrize("dtype", FLOATS)
def test_views_and_other_integer_targets_are_taken_and_left_unmodified(dtype):
    rng = np.random.default_rng(4)
    wide = random(rng, (9, 12), dtype)
    kept_wide, target = wide.copy(), rng.integers(0, 6, 18)
    logits = wide[:, ::2]  # not contiguous: copied
    want = ops.softmax_cross_entropy(np.ascontiguousarray(logits), target[::2])
    for t in (target[::2], target[::2].astype(np.int32), target[::2].astype(np.uint8)):
        kept = t.copy()
        loss, grad = ops.softmax_cross_entropy(logits, t)
        np.testing.assert_array_equal(loss, want[0])
        np.testing.assert_array_equal(grad, want[1])
        np.testing.assert_array_equal(t, kept)
    np.testing.assert_array_equal(wide, kept_wide)


def test_the_float32_exponentials_stay_float32():
    """The sums are float64 on purpose (kernels/loss.py), the exponentials are not."""
    x = np.zeros((3, 4), np.float32)
    ir = _llvm_ir(loss_kernels.softmax_cross_entropy,
                  (x, np.zeros(3, np.int64), np.empty_like(x), np.empty(1, np.float32)))
    assert re.search(r"@llvm\.exp\.(?:v\d+)?f32\b", ir)
    assert not re.search(r"@llvm\.exp\.(?:v\d+)?f64\b|@exp\(", ir)


# --- non-finite logits: PyTorch's results --------------------------------------------------------

inf, nan = np.inf, np.nan
# Row 0 of a batch of two (target [0, 1]): the label is class 0.
NONFINITE_ROWS = {
    "+inf at the label": [inf, 1, 2], "+inf elsewhere": [1, inf, 2], "two +inf": [inf, inf, 2],
    "-inf at the label": [-inf, 1, 2], "-inf elsewhere": [1, -inf, 2],
    "all -inf": [-inf, -inf, -inf], "NaN at the label": [nan, 1, 2], "NaN elsewhere": [1, nan, 2],
    "+inf and -inf": [1, inf, -inf], "-inf with +inf at the label": [inf, -inf, 2],
    "far apart": [1e38, -1e38, 0],
}


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "serial"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("row", NONFINITE_ROWS, ids=list(NONFINITE_ROWS))
def test_nonfinite_logits_give_pytorchs_results(row, dtype, parallel, monkeypatch):
    """Loss and gradient are NaN, +inf and -inf where PyTorch's (in the logits' dtype) are,
    and agree elsewhere; the other row is untouched by the first's."""
    _parallel(monkeypatch, parallel)
    logits = np.array([NONFINITE_ROWS[row], [0.5, 0.1, -0.3]], dtype)
    target = np.array([0, 1])
    loss, grad = ops.softmax_cross_entropy(logits, target)
    x = torch.from_numpy(logits).requires_grad_()
    theirs = torch.nn.functional.cross_entropy(x, torch.from_numpy(target))
    theirs.backward()
    for mine, want in ((loss, theirs.detach().numpy()), (grad, x.grad.numpy())):
        assert np.array_equal(oracle.nonfinite(mine), oracle.nonfinite(want)), (mine, want)
        finite = np.isfinite(want)
        np.testing.assert_allclose(mine[finite], want[finite], rtol=10 * tolerance(dtype),
                                   atol=1e-7)


def test_float32_row_losses_are_summed_in_float64_where_pytorchs_sum_overflows():
    """The one documented difference (kernels/loss.py): row losses of 2e38, finite in float32,
    sum past its range in PyTorch's float32 mean (+inf); their float64 sum does not."""
    logits = np.array([[1e38, -1e38]] * 2, np.float32)
    target = np.array([1, 1])
    loss, grad = ops.softmax_cross_entropy(logits, target)
    theirs = torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                               torch.from_numpy(target))
    assert np.isposinf(theirs.item()) and loss == np.float32(2e38)
    np.testing.assert_array_equal(grad, [[0.5, -0.5], [0.5, -0.5]])


# --- arguments -----------------------------------------------------------------------------------

def test_an_empty_batch_gives_a_nan_loss_and_runs_no_kernel(monkeypatch):
    def no_kernel(*args):
        raise AssertionError("a kernel ran for an empty batch")
    monkeypatch.setattr(driver, "cpu_call", no_kernel)
    for dtype in FLOATS:
        loss, grad = ops.softmax_cross_entropy(np.zeros((0, 3), dtype), np.zeros(0, np.int64))
        assert loss.shape == () and loss.dtype == dtype and np.isnan(loss)
        assert grad.shape == (0, 3) and grad.dtype == dtype


@pytest.mark.parametrize("logits, target, error, message", [
    (np.zeros(3), np.zeros(3, np.int64), ValueError, r"logits must be 2-D \(N, C\), got shape"),
    (np.zeros((2, 3, 4)), np.zeros(2, np.int64), ValueError, "logits must be 2-D"),
    (np.zeros((2, 3), np.int64), np.zeros(2, np.int64), TypeError,
     "logits must be float32 or float64, got int64"),
    (np.zeros((2, 3)), np.zeros(3, np.int64), ValueError,
     r"target must be \(N,\) integer class indices for logits \(2, 3\), got int64 \(3,\)"),
    (np.zeros((2, 3)), np.zeros((2, 1), np.int64), ValueError, r"got int64 \(2, 1\)"),
    (np.zeros((2, 3)), np.zeros(2), ValueError, r"integer class indices .* got float64"),
    (np.zeros((2, 3)), np.zeros(2, bool), ValueError, "got bool"),
    (np.zeros((2, 3)), np.array([0, 3]), ValueError,
     r"target classes must lie in \[0, 3\) for logits \(2, 3\), got values in \[0, 3\]"),
    (np.zeros((2, 3)), np.array([-1, 0]), ValueError, r"got values in \[-1, 0\]"),
    (np.zeros((2, 0)), np.array([0, 0]), ValueError, r"must lie in \[0, 0\)"),
    (np.zeros((2, 3)), [0, 1], TypeError, "target must be a NumPy or CuPy array"),
], ids=["1-D", "3-D", "int logits", "short target", "2-D target", "float target",
        "bool target", "class C", "class -1", "no classes", "list target"])
def test_bad_arguments_are_refused_naming_them(logits, target, error, message):
    with pytest.raises(error, match=message):
        ops.softmax_cross_entropy(logits, target)


# --- F.cross_entropy: one graph node -------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
def test_cross_entropy_is_one_node_whose_backward_scales_the_kernels_gradient(dtype):
    rng = np.random.default_rng(6)
    x, target = random(rng, (8, 5), dtype), rng.integers(0, 5, 8)
    want = _expected(x, target)
    for labels in (target, target.astype(np.int32), list(target), tensor(target)):
        logits = tensor(x, requires_grad=True)
        loss = F.cross_entropy(logits, labels)
        assert loss._op == "cross_entropy" and loss._parents == (logits,)
        assert loss.shape == () and loss.dtype == dtype
        (loss * 3.0).backward()
        assert logits.grad.dtype == dtype
        _check(loss.data, logits.grad.numpy() / 3, want)


def test_cross_entropy_casts_the_upstream_gradient_to_the_logits_dtype():
    logits = tensor(np.zeros((2, 4), np.float32), requires_grad=True)
    F.cross_entropy(logits, np.array([0, 3])).backward(np.float64(2.0))
    assert logits.grad.dtype == np.float32
    np.testing.assert_array_equal(logits.grad.numpy(), [[-0.75, 0.25, 0.25, 0.25],
                                                        [0.25, 0.25, 0.25, -0.75]])


def test_cross_entropy_refuses_bad_targets():
    logits = tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    with pytest.raises(ValueError, match=r"target must be \(N,\) integer class indices"):
        F.cross_entropy(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 3\)"):
        F.cross_entropy(logits, [0, 5])
