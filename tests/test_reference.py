"""The float64 reference itself, checked against torch where the two coincide."""
import pytest
import torch
import torch.nn.functional as F

import lambdaconv as lc
from lambdaconv.geometry import make_geometry
from lambdaconv.ir import resolve_op
from lambdaconv.reference import reference_conv

from conftest import rel_err

def CONV(d):
    return {1: lc.conv1d, 2: lc.conv2d, 3: lc.conv3d}[d]


@pytest.mark.parametrize("d,size,k,kw", [
    (1, (11,), (3,), dict(stride=2, padding=1)),
    (2, (7, 9), (3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    (2, (8, 8), (3, 3), dict(groups=2, padding="same")),
    (2, (8, 8), (3, 3), dict(groups=4, padding=1)),  # depthwise
    (3, (5, 6, 4), (2, 3, 2), dict(stride=(1, 2, 1), padding=1)),
])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_linear_is_torch_conv(d, size, k, kw, padding_mode):
    g = torch.Generator().manual_seed(0)
    groups = kw.get("groups", 1)
    x = torch.randn((2, 4) + size, generator=g, dtype=torch.float64)
    w = torch.randn((6 if groups != 4 else 4, 4 // groups) + k, generator=g, dtype=torch.float64)
    b = torch.randn(w.shape[0], generator=g, dtype=torch.float64)
    y = CONV(d)(x, "linear", {"weight": w}, b, backend="reference", padding_mode=padding_mode, **kw)
    tconv = getattr(torch.nn, f"Conv{d}d")(4, w.shape[0], k, padding_mode=padding_mode,
                                          dtype=torch.float64, **kw)
    with torch.no_grad():
        tconv.weight.copy_(w)
        tconv.bias.copy_(b)
    assert rel_err(y, tconv(x)) < 1e-12


def test_reference_gradients_are_torch_conv_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = lc.conv2d(x, "W*x", {"W": w}, stride=2, padding=1, backend="reference")
    yt = F.conv2d(x, w, stride=2, padding=1)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(y, [x, w], gy), torch.autograd.grad(yt, [x, w], gy)):
        assert rel_err(a, r) < 1e-12


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (2, 0, 2), (1, 1, 2)])
def test_dilation_with_zero_weight_and_ignore_is_max_pool(stride, padding, dilation):
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    w = torch.zeros(3, 1, 3, 3, dtype=torch.float64)  # depthwise, W = 0: max-plus is max pooling
    y = lc.conv2d(x, "dilation", {"weight": w}, stride=stride, padding=padding, dilation=dilation, groups=3,
                  padding_mode="ignore", backend="reference")
    yt = F.max_pool2d(x, 3, stride=stride, padding=padding, dilation=dilation)
    assert torch.equal(y, yt)


@pytest.mark.parametrize("padding_mode,count_include_pad", [("zeros", True), ("ignore", False)])
def test_mean_of_x_is_avg_pool(padding_mode, count_include_pad):
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    w = torch.ones(3, 1, 3, 3, dtype=torch.float64)
    y = lc.conv2d(x, "x*W", {"W": w}, stride=2, padding=1, groups=3, reduce="mean",
                  padding_mode=padding_mode, backend="reference")
    yt = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=count_include_pad)
    assert rel_err(y, yt) < 1e-12


def test_reference_by_hand_one_window():
    """Spell out one output of a non-linear op with max and logsumexp reductions."""
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    A = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    B = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    taps = torch.sigmoid(A * x) * B
    for reduce, expect in [("sum", taps.sum()), ("max", taps.max()), ("min", taps.min()),
                           ("mean", taps.mean()), ("logsumexp", torch.logsumexp(taps.flatten(), 0))]:
        y = lc.conv2d(x, "sigmoid(A*x)*B", {"A": A, "B": B}, reduce=reduce, backend="reference")
        assert y.shape == (1, 1, 1, 1)
        assert abs(y.item() - expect.item()) < 1e-12, reduce


def test_zeros_padding_sends_zero_through_op():
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    W = torch.full((1, 1, 3, 3), 2.0, dtype=torch.float64)
    # 8 padded taps see x = 0: exp(0) * 2 = 2 each; the centre exp(1) * 2
    y = lc.conv2d(x, "exp(x)*W", {"W": W}, padding=1, backend="reference")
    assert abs(y.item() - (8 * 2.0 + 2 * torch.e)) < 1e-12
    y = lc.conv2d(x, "exp(x)*W", {"W": W}, padding=1, padding_mode="ignore", backend="reference")
    assert abs(y.item() - 2 * torch.e) < 1e-12


def test_ignore_never_evaluates_padded_taps_in_the_gradient():
    # log(0) = -inf at padded taps would make d/dW = log(x) infinite if they were evaluated and masked
    x = (torch.rand(1, 1, 4, 4, dtype=torch.float64) + 0.5)
    W = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    y = lc.conv2d(x, "log(x)*W", {"W": W}, padding=1, padding_mode="ignore", backend="reference")
    (gw,) = torch.autograd.grad(y.sum(), [W])
    assert torch.isfinite(gw).all()
    spec = resolve_op("log(x)*W")
    g = make_geometry(2, x.shape, W.shape, 1, 1, 1, 1, "ignore")
    assert torch.isfinite(reference_conv(x, spec, {"W": W}, None, g, "sum")).all()
