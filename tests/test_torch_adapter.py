"""fastconv under PyTorch: gradcheck of every Function and argument form, the modules against
torch's own, and convert() on a whole network."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastconv.torch as ft

CONV_FORMS = [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=2, padding=1, dilation=1, groups=1),
    dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2),
    dict(stride=1, padding="same", dilation=2, groups=1),
    dict(stride=1, padding="valid", dilation=1, groups=4),
]


def _rand(*shape, dtype=torch.float64, grad=True):
    return torch.randn(*shape, dtype=dtype, requires_grad=grad)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("form", CONV_FORMS, ids=lambda f: ",".join(f"{k}={v}"
                                                                    for k, v in f.items()))
def test_conv2d_matches_torch_and_passes_gradcheck(form, bias):
    torch.manual_seed(0)
    x, w = _rand(2, 4, 7, 6), _rand(8, 4 // form["groups"], 3, 3)
    b = _rand(8) if bias else None
    got = ft.conv2d(x, w, b, **form)
    want = F.conv2d(x, w, b, **form)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: ft.conv2d(*a, **form),
                                    (x, w) if b is None else (x, w, b))


@pytest.mark.parametrize("form", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=(2, 3), stride=(1, 2), ceil_mode=True)],
                         ids=["k2", "k3s2p1", "k23_ceil"])
def test_pooling_matches_torch_and_passes_gradcheck(form):
    torch.manual_seed(1)
    x = _rand(2, 3, 7, 7)
    torch.testing.assert_close(ft.max_pool2d(x, **form), F.max_pool2d(x, **form))
    torch.testing.assert_close(ft.avg_pool2d(x, **form), F.avg_pool2d(x, **form))
    torch.testing.assert_close(ft.avg_pool2d(x, count_include_pad=False, **form),
                               F.avg_pool2d(x, count_include_pad=False, **form))
    assert torch.autograd.gradcheck(lambda a: ft.max_pool2d(a, **form), (x,))
    assert torch.autograd.gradcheck(lambda a: ft.avg_pool2d(a, **form), (x,))


def test_float32_forward_and_backward_match_torch():
    torch.manual_seed(2)
    x, w, b = (_rand(4, 3, 9, 9, dtype=torch.float32), _rand(5, 3, 3, 3, dtype=torch.float32),
               _rand(5, dtype=torch.float32))
    ours = ft.conv2d(x, w, b, padding=1)
    ours.square().sum().backward()
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    F.conv2d(x, w, b, padding=1).square().sum().backward()
    assert ours.dtype == torch.float32
    for got, t in zip(grads, (x, w, b), strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-4)


def _network():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5, padding="same"), torch.nn.Tanh(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 7 * 7, 10))


def test_convert_keeps_parameters_outputs_and_gradients():
    torch.manual_seed(3)
    model = _network().double()
    converted = ft.convert(model)
    assert type(converted[0]) is ft.Conv2d and type(converted[2]) is ft.MaxPool2d
    assert type(converted[5]) is ft.AvgPool2d and type(model[0]) is torch.nn.Conv2d
    assert isinstance(converted[0], torch.nn.Conv2d)  # a subclass: hooks, optimisers, state
    assert converted.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    out, want = converted(x), model(x)
    torch.testing.assert_close(out, want)
    out.sum().backward()
    want.sum().backward()
    for (name, p), q in zip(converted.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_convert_inplace_and_unsupported_layers_stay_with_a_warning():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"),
                                torch.nn.Conv2d(2, 2, 3))
    with pytest.warns(UserWarning, match=r"0 \(Conv2d: padding_mode='circular'\)"):
        same = ft.convert(model, inplace=True)
    assert same is model
    assert type(model[0]) is torch.nn.Conv2d and type(model[1]) is ft.Conv2d


def test_bad_inputs_are_refused():
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        ft.conv2d(np.ones((1, 1, 3, 3)), torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        ft.conv2d(torch.ones(1, 2, 5, 5), torch.ones(1, 3, 3, 3))
