"""Bad input is refused before any kernel runs; inputs are never modified; layout in memory of the
inputs (strides, order) never changes a result.

The refusals are one table: each row is an op, the arguments that differ from a valid call of
that op, the exception and a regex its message must match. Test ids are built from the rows.
"""

import re

import numpy as np
import pytest

from fastconv import dispatch, ops, registry

# --- valid calls, one per op; the table below spoils one argument at a time --------------------

X = np.zeros((1, 2, 5, 5))  # NCHW
W = np.zeros((4, 2, 3, 3))  # OIHW
GY = np.zeros((1, 4, 3, 3))  # conv2d(X, W)
PY = np.zeros((1, 2, 2, 2))  # max_pool2d(X, 2)
XN = np.zeros((1, 5, 5, 2))  # NHWC
WN = np.zeros((3, 3, 2, 4))  # HWIO
GYN = np.zeros((1, 3, 3, 4))

VALID = {
    "conv2d": dict(x=X, w=W),
    "conv2d_backward_input": dict(gy=GY, w=W, x_shape=X.shape),
    "conv2d_backward_weight": dict(gy=GY, x=X, w_shape=W.shape),
    "conv2d_backward_bias": dict(gy=GY),
    "max_pool2d": dict(x=X, kernel_size=2),
    "max_pool2d_backward": dict(gy=PY, x=X, kernel_size=2),
    "avg_pool2d": dict(x=X, kernel_size=2),
    "avg_pool2d_backward": dict(gy=PY, x_shape=X.shape, kernel_size=2),
}
CONV = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")
POOL = ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward")
WINDOWED = CONV + POOL  # every op that takes stride and padding


def _shape(shape):
    return re.escape(str(tuple(shape)))


def _arrays(op):
    return [k for k, v in VALID[op].items() if isinstance(v, np.ndarray)]


def _generic_rows():
    """Rows that apply to every op or every array argument of an op."""
    for op in VALID:
        yield op, dict(device="cuda:x"), ValueError, r"device must be .*'cuda:x'"
        yield op, dict(device="tpu"), ValueError, r"device must be .*'tpu'"
        yield op, dict(data_format="NCWH"), ValueError, r"data_format must be .*'NCWH'"
        names = _arrays(op)
        for name in names:
            a = VALID[op][name]
            yield op, {name: a.tolist()}, TypeError, rf"\b{name} must be a NumPy or CuPy.*got list"
            yield op, {name: a.astype(np.int64)}, TypeError, rf"\b{name} must be float.*int64"
            yield op, {name: a.astype(np.float16)}, TypeError, rf"\b{name} must be float.*float16"
            for bad in (a[0], a[None]):  # rank 3 and rank 5
                yield op, {name: bad}, ValueError, rf"\b{name}\b.*{_shape(bad.shape)}"
        for first, second in zip(names, names[1:], strict=False):
            mixed = {second: VALID[op][second].astype(np.float32)}
            yield op, mixed, TypeError, rf"\b{first} float64, {second} float32"
        if "x_shape" in VALID[op] or "w_shape" in VALID[op]:
            name = "x_shape" if "x_shape" in VALID[op] else "w_shape"
            good = VALID[op][name]
            message = rf"\b{name} must be 4 ints, positive but for a batch of 0"
            for bad in (good[:3], good + (1,), good[:3] + (0,), good[:3] + (5.0,), list(good[:3]),
                        "NCHW", None):
                yield op, {name: bad}, ValueError, message
            yield op, {name: good[:3] + (True,)}, ValueError, message, ()
    for op in WINDOWED:
        for stride in (0, -1, (1, 0)):
            yield op, dict(stride=stride), ValueError, r"stride must be >= 1"
        for stride in (True, 1.0, (1, 2.0), (1, 1, 1), "1"):
            yield op, dict(stride=stride), TypeError, r"stride must be an int or a pair"
        for padding in (-1, (0, -1)):
            yield op, dict(padding=padding), ValueError, r"padding must be >= 0"
        yield op, dict(padding=0.5), TypeError, r"padding must be an int or a pair"
        for padding in ("full", "causal", ""):
            yield op, dict(padding=padding), ValueError, rf"padding must be .*'{padding}'"


def _conv_rows():
    x3 = np.zeros((1, 3, 5, 5))
    yield "conv2d", dict(w=np.zeros((4, 3, 3, 3))), ValueError, \
        r"w expects 3 input channels.*x has 2.*x \(1, 2, 5, 5\), w \(4, 3, 3, 3\)"
    yield "conv2d", dict(x=XN, w=np.zeros((3, 3, 3, 4)), data_format="NHWC"), ValueError, \
        r"w expects 3 input channels.*x has 2.*x \(1, 5, 5, 2\), w \(3, 3, 3, 4\)"
    yield "conv2d", dict(x=x3, w=np.zeros((4, 1, 3, 3)), groups=2), ValueError, \
        r"groups=2 must divide the input channels 3.*x \(1, 3, 5, 5\), w \(4, 1, 3, 3\)"
    yield "conv2d", dict(w=np.zeros((3, 1, 3, 3)), groups=2), ValueError, \
        r"groups=2 must divide .* output channels 3.*x \(1, 2, 5, 5\), w \(3, 1, 3, 3\)"
    yield "conv2d_backward_input", dict(x_shape=(1, 3, 5, 5), groups=2), ValueError, \
        r"groups=2 must divide the input channels 3.*x \(1, 3, 5, 5\), w \(4, 2, 3, 3\)"
    yield "conv2d_backward_weight", dict(w_shape=(4, 3, 3, 3)), ValueError, \
        r"w expects 3 input channels.*x \(1, 2, 5, 5\), w \(4, 3, 3, 3\)"
    for groups in (0, -2):
        yield "conv2d", dict(groups=groups), ValueError, rf"groups must be .*{groups}"
    for groups in (True, 1.0, "1", None):
        yield "conv2d", dict(groups=groups), (ValueError, TypeError), r"groups must be"
    for op in CONV:
        for dilation in (0, (1, -1)):
            yield op, dict(dilation=dilation), ValueError, r"dilation must be >= 1"
        yield op, dict(dilation=1.5), TypeError, r"dilation must be an int or a pair"
        yield op, dict(padding=((0, -1), (0, 0))), ValueError, r"padding must be >= 0"
        yield op, dict(algo="fft"), ValueError, r"algo must be .*'fft'"
        yield op, dict(algo="numba"), ValueError, r"algo must be .*'numba'"
    for b in (np.zeros(3), np.zeros((4, 1))):
        yield "conv2d", dict(b=b), ValueError, rf"\bb has shape {_shape(b.shape)}.*needs \(4,\)"
    # 0-d arrays keep their shape (np.ascontiguousarray would make them (1,))
    yield "conv2d", dict(b=np.zeros(())), ValueError, r"\bb has shape \(\).*needs \(4,\)"
    yield "conv2d", dict(w=W[:1], b=np.zeros(())), ValueError, r"\bb has shape \(\).*needs \(1,\)"
    yield "conv2d", dict(x=np.zeros(())), ValueError, r"\bx must be 4-D NCHW, got shape \(\)"
    yield "conv2d", dict(b=[0.0] * 4), TypeError, r"\bb must be a NumPy or CuPy array.*got list"
    yield "conv2d", dict(b=np.zeros(4, np.int32)), TypeError, r"\bb must be float.*int32"
    yield "conv2d", dict(b=np.zeros(4, np.float32)), TypeError, r"x float64, w float64, b float32"
    for act in ("gelu", "", 1):
        yield "conv2d", dict(activation=act), ValueError, rf"activation must be .*{act!r}"
    yield "conv2d_backward_input", dict(gy=np.zeros((1, 4, 4, 4))), ValueError, \
        r"gy has shape \(1, 4, 4, 4\).*x \(1, 2, 5, 5\) with w \(4, 2, 3, 3\) needs \(1, 4, 3, 3\)"
    yield "conv2d_backward_weight", dict(gy=np.zeros((1, 3, 3, 3))), ValueError, \
        r"gy has shape \(1, 3, 3, 3\).*x \(1, 2, 5, 5\) with w \(4, 2, 3, 3\) needs \(1, 4, 3, 3\)"
    yield "conv2d_backward_input", dict(gy=GY, stride=2), ValueError, \
        r"gy has shape \(1, 4, 3, 3\).*needs \(1, 4, 2, 2\)"
    yield "conv2d_backward_input", dict(w=WN, x_shape=XN.shape, data_format="NHWC"), ValueError, \
        r"gy has shape \(1, 4, 3, 3\).*x \(1, 5, 5, 2\) with w \(3, 3, 2, 4\) needs \(1, 3, 3, 4\)"


def _all_of(*patterns):
    """A regex matching a message that contains every pattern, in any order."""
    return "".join(f"(?=.*{p})" for p in patterns)


def _window_rows():
    """A window larger than the padded input: no output, whatever the stride."""
    small = np.zeros((1, 2, 2, 2))
    conv = _all_of("larger than", r"\bw \(4, 2, 3, 3\)", r"\bx \(1, 2, 2, 2\)")
    yield "conv2d", dict(x=small), ValueError, conv
    yield "conv2d", dict(x=small, stride=3), ValueError, conv
    yield "conv2d", dict(x=small, padding="valid"), ValueError, conv
    yield "conv2d_backward_weight", dict(x=small), ValueError, conv
    yield "conv2d_backward_input", dict(x_shape=(1, 2, 2, 2)), ValueError, conv
    yield "conv2d", dict(dilation=(1, 3)), ValueError, \
        _all_of("larger than", r"\bw \(4, 2, 3, 3\)", r"\bx \(1, 2, 5, 5\)", r"\b7\b")
    pool = _all_of("larger than", r"kernel_size \(3, 3\)", r"\bx \(1, 2, 2, 2\)")
    for op in ("max_pool2d", "avg_pool2d"):
        yield op, dict(x=small, kernel_size=3), ValueError, pool
        yield op, dict(x=small, kernel_size=3, stride=3), ValueError, pool
        yield op, dict(x=small, kernel_size=3, padding="valid"), ValueError, pool
        yield op, dict(x=np.zeros((1, 2, 1, 5)), kernel_size=4, padding=1), ValueError, \
            _all_of("larger than", r"kernel_size \(4, 4\)", r"\bx \(1, 2, 1, 5\)")


def _pool_rows():
    for op in POOL:
        for k in (0, -1, (2, 0)):
            yield op, dict(kernel_size=k), ValueError, r"kernel_size must be >= 1"
        for k in (2.0, True, None, (2, 2, 2)):
            yield op, dict(kernel_size=k), TypeError, r"kernel_size must be an int or a pair"
        yield op, dict(kernel_size=3, padding=2), ValueError, \
            r"padding \(2, 2\) must be at most half of kernel_size \(3, 3\)"
        yield op, dict(kernel_size=(2, 3), padding=(0, 2)), ValueError, \
            r"padding \(0, 2\) must be at most half of kernel_size \(2, 3\)"
        yield op, dict(kernel_size=2, padding=((0, 2), (0, 0))), ValueError, \
            r"padding \(\(0, 2\), \(0, 0\)\) must be smaller than kernel_size \(2, 2\)"
        yield op, dict(padding=((0, 1), (0, 0)), ceil_mode=True), ValueError, \
            r"ceil_mode needs PyTorch's symmetric padding"
        yield op, dict(padding=((0, 1), (0, 0.5))), TypeError, r"padding must be an int or a pair"
        if op.startswith("max"):
            yield op, dict(dilation=0), ValueError, r"dilation must be >= 1, got 0"
        else:
            yield op, dict(divisor_override=0), ValueError, r"divisor_override must not be zero"
            yield op, dict(divisor_override=1.5), TypeError, r"divisor_override must be an int"
        for word in ("same", "VALID"):
            yield op, dict(padding=word, ceil_mode=True), ValueError, rf"ceil_mode.*'{word}'"
    yield "max_pool2d_backward", dict(gy=np.zeros((1, 2, 3, 3))), ValueError, \
        r"gy has shape \(1, 2, 3, 3\).*max_pool2d of x \(1, 2, 5, 5\) needs \(1, 2, 2, 2\)"
    yield "max_pool2d_backward", dict(gy=PY, ceil_mode=True), ValueError, \
        r"gy has shape \(1, 2, 2, 2\).*needs \(1, 2, 3, 3\)"
    yield "avg_pool2d_backward", dict(gy=np.zeros((1, 2, 3, 3))), ValueError, \
        r"gy has shape \(1, 2, 3, 3\).*avg_pool2d of x \(1, 2, 5, 5\) needs \(1, 2, 2, 2\)"
    yield "avg_pool2d_backward", dict(x_shape=(1, 5, 5, 3), data_format="NHWC"), ValueError, \
        r"gy has shape \(1, 2, 2, 2\).*x \(1, 5, 5, 3\) needs \(1, 2, 2, 3\)"


def _describe(v):
    if isinstance(v, np.ndarray):
        return f"{v.dtype}{list(v.shape)}".replace(" ", "")
    if isinstance(v, list) and any(isinstance(e, list) for e in v):
        return f"list{list(np.shape(v))}".replace(" ", "")
    return repr(v).replace(" ", "")


def _case_id(op, bad):
    return op + "-" + ",".join(f"{k}={_describe(v)}" for k, v in bad.items())


def _cases():
    rows = (*_generic_rows(), *_conv_rows(), *_pool_rows(), *_window_rows())
    seen = {}
    for op, bad, exc, pattern, *marks in rows:
        case_id = _case_id(op, bad)
        seen[case_id] = seen.get(case_id, 0) + 1
        if seen[case_id] > 1:
            case_id += f"-{seen[case_id]}"
        yield pytest.param(op, bad, exc, pattern, id=case_id, marks=marks[0] if marks else ())


@pytest.fixture
def no_kernel_runs(monkeypatch):
    """Every way into a kernel fails the test: the dispatcher and every registered function."""
    called = []

    def refuse(name):
        def fail(*args, **kwargs):
            called.append(name)
            raise AssertionError(f"{name} was called for a bad call")
        return fail

    monkeypatch.setattr(dispatch, "select", refuse("dispatch.select"))
    for key, algos in list(registry._implementations.items()):
        monkeypatch.setitem(registry._implementations, key,
                            {algo: refuse(f"kernel {key} {algo}") for algo in algos})
    return called


@pytest.mark.parametrize("op", VALID)
def test_valid_calls_run(op):
    """The baseline of every table row is itself a valid call."""
    out = getattr(ops, op)(**VALID[op])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64


@pytest.mark.parametrize("op, bad, exc, pattern", list(_cases()))
def test_bad_input_is_refused(op, bad, exc, pattern, no_kernel_runs):
    with pytest.raises(exc, match=pattern):
        getattr(ops, op)(**{**VALID[op], **bad})
    assert no_kernel_runs == []


# --- spellings that must be accepted (the words are case-insensitive) -------------------------

def _spellings():
    """(op, arguments, the same arguments spelled canonically)."""
    nhwc = {"conv2d": dict(x=XN, w=WN), "max_pool2d": dict(x=XN, kernel_size=2),
            "avg_pool2d": dict(x=XN, kernel_size=2), "conv2d_backward_bias": dict(gy=GYN)}
    for op, args in nhwc.items():
        for word in ("nhwc", "Nhwc"):
            yield op, {**args, "data_format": word}, {**args, "data_format": "NHWC"}
        yield op, {**VALID[op], "data_format": "nchw"}, {**VALID[op], "data_format": "NCHW"}
    for op in ("conv2d", "max_pool2d", "avg_pool2d"):
        for word in ("SAME", "Same", "Valid", "VALID"):
            args = {**VALID[op], "padding": word}
            yield op, args, {**args, "padding": word.lower()}
    for word in ("ReLU", "TANH", "Sigmoid"):
        yield "conv2d", dict(x=X, w=W, activation=word), dict(x=X, w=W, activation=word.lower())
    yield "conv2d", dict(x=X, w=W, device="cpu"), dict(x=X, w=W, device=None)


@pytest.mark.parametrize("op, args, canonical",
                         [pytest.param(*row, id=_case_id(*row[:2])) for row in _spellings()])
def test_accepted_spellings_give_the_same_result(op, args, canonical):
    rng = np.random.default_rng(0)
    args = {k: rng.standard_normal(v.shape) if isinstance(v, np.ndarray) else v
            for k, v in args.items()}
    canonical = {k: args[k] if isinstance(v, np.ndarray) else v for k, v in canonical.items()}
    fn = getattr(ops, op)
    np.testing.assert_array_equal(fn(**args), fn(**canonical))


# --- inputs are read only; memory layout does not matter ----------------------------------------

RUNS = [(op, algo) for op in CONV for algo in registry.general("cpu")] + [
    (op, None) for op in ("conv2d_backward_bias", *POOL)]


def _random_call(op, algo, layout, rng):
    """Keyword arguments of ``op`` with random data in ``layout`` (grouped, strided, padded)."""
    nchw = layout == "NCHW"
    x = rng.standard_normal((2, 4, 6, 5) if nchw else (2, 6, 5, 4))
    w = rng.standard_normal((6, 2, 3, 2) if nchw else (3, 2, 2, 6))
    conv = dict(stride=(2, 1), padding=1, groups=2, data_format=layout, algo=algo)
    gy = rng.standard_normal((2, 6, 3, 6) if nchw else (2, 3, 6, 6))
    pool = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, data_format=layout)
    py = rng.standard_normal((2, 4, 4, 3) if nchw else (2, 4, 3, 4))
    return {
        "conv2d": lambda: dict(x=x, w=w, b=rng.standard_normal(6), activation="tanh", **conv),
        "conv2d_backward_input": lambda: dict(gy=gy, w=w, x_shape=x.shape, **conv),
        "conv2d_backward_weight": lambda: dict(gy=gy, x=x, w_shape=w.shape, **conv),
        "conv2d_backward_bias": lambda: dict(gy=gy, data_format=layout),
        "max_pool2d": lambda: dict(x=x, **pool),
        "max_pool2d_backward": lambda: dict(gy=py, x=x, **pool),
        "avg_pool2d": lambda: dict(x=x, **pool),
        "avg_pool2d_backward": lambda: dict(gy=py, x_shape=x.shape, **pool),
    }[op]()


runs = pytest.mark.parametrize(
    "op, algo", [pytest.param(op, algo, id=f"{op}-{algo or 'auto'}") for op, algo in RUNS])
layouts = pytest.mark.parametrize("layout", ["NCHW", "NHWC"])


@layouts
@runs
def test_inputs_are_never_modified(op, algo, layout):
    kwargs = _random_call(op, algo, layout, np.random.default_rng(1))
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    before = {k: v.copy() for k, v in arrays.items()}
    out = getattr(ops, op)(**kwargs)
    for name, a in arrays.items():
        np.testing.assert_array_equal(a, before[name], err_msg=f"{name} was changed")
        assert not np.shares_memory(out, a), f"the output is a view of {name}"


def _step(a):
    """The same values in every other element of a bigger, NaN-filled array."""
    big = np.full(tuple(2 * n for n in a.shape), np.nan)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


STRIDED = {
    "step": _step,
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "fortran": np.asfortranarray,
    "reversed": lambda a: np.flip(np.flip(a).copy()),
}


@pytest.mark.parametrize("kind", STRIDED)
@layouts
@runs
def test_strided_inputs_match_contiguous(op, algo, layout, kind):
    kwargs = _random_call(op, algo, layout, np.random.default_rng(2))
    strided = {k: STRIDED[kind](v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    for name, a in strided.items():
        if isinstance(a, np.ndarray) and a.ndim > 1:
            assert not a.flags.c_contiguous, name
            np.testing.assert_array_equal(a, kwargs[name])
    expected = getattr(ops, op)(**kwargs)
    np.testing.assert_allclose(getattr(ops, op)(**strided), expected, rtol=1e-12, atol=1e-12)
