"""grad=: per-tap partial derivatives the user chooses, against a hand computation (unfold, float64),
on every backend that runs them (tiled here; triton under TRITON_INTERPRET=1 in a child process)."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import lambdaconv as lc
from lambdaconv import reductions

from conftest import run_interpreted

ADDER = {"x": "hardtanh(weight - x)", "weight": "x - weight"}  # AdderNet's training gradients


def _hand(x, w, gy, gx_fn, gw_fn, reduce, k=3, pad=1):
    """(grad_x, grad_w) of y = REDUCE_taps -|x - w| with the given per-tap partials."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    cols = F.unfold(x, k, padding=pad).reshape(n, 1, c * k * k, -1)  # (N, 1, CK, P)
    wf = w.reshape(1, o, c * k * k, 1)
    taps = -(cols - wf).abs()  # (N, O, CK, P)
    if reduce == "sum":
        s = gy.reshape(n, o, 1, -1).expand_as(taps)
    elif reduce == "mean":
        s = gy.reshape(n, o, 1, -1).expand_as(taps) / (c * k * k)
    else:  # max / min: the upstream gradient goes to the selected tap
        idx = (taps.argmax(2) if reduce == "max" else taps.argmin(2))[:, :, None]
        s = torch.zeros_like(taps).scatter_(2, idx, gy.reshape(n, o, 1, -1))
    gcols = (s * gx_fn(cols, wf)).sum(1)  # (N, CK, P)
    gx = F.fold(gcols, (h, wd), k, padding=pad)
    gw = (s * gw_fn(cols, wf)).sum((0, 3)).reshape(w.shape)
    return gx, gw


def _check(backend, reduce, dtype=torch.float64, tol=1e-10, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    gy = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64)
    xr, wr = x.to(device, dtype).requires_grad_(), w.to(device, dtype).requires_grad_()
    y = lc.conv2d(xr, "adder", {"weight": wr}, padding=1, reduce=reduce, backend=backend, grad=ADDER)
    y_exact = lc.conv2d(x, "adder", {"weight": w}, padding=1, reduce=reduce, backend="reference")
    assert torch.allclose(y.double().cpu(), y_exact, atol=tol * 10, rtol=tol * 10)  # the forward is unchanged
    gx, gw = torch.autograd.grad(y, [xr, wr], gy.to(device, dtype))
    hx, hw = _hand(x, w, gy, lambda a, b: (b - a).clamp(-1, 1), lambda a, b: a - b, reduce)
    for got, want in ((gx, hx), (gw, hw)):
        got = got.double().cpu()
        assert torch.allclose(got, want, atol=tol, rtol=tol), (got - want).abs().max()


if os.environ.get("TRITON_INTERPRET") != "1":

    @pytest.mark.parametrize("reduce", [r.name for r in reductions.all_records() if r.backward != "softmax"])
    def test_tiled_matches_the_hand_computation(reduce):
        _check("tiled", reduce)

    def test_interpreted_triton(tmp_path):
        pytest.importorskip("triton")
        run_interpreted(__file__, cache=tmp_path / "cache", all_ran=True)

    def test_plan_explain_and_module():
        p = lc.explain("adder", grad=ADDER)
        assert p.strategy == "direct" and "grad=" in p.reason and len(p.notes) == 2
        assert lc.explain("offset", grad={"A": "x"}).strategy == "direct"  # no native conv's exact backward
        layer = lc.Conv2d(3, 4, 3, padding=1, op="adder", grad=ADDER)
        x = torch.randn(2, 3, 6, 6, requires_grad=True)
        layer(x).sum().backward()
        ref = lc.conv2d(x.detach().requires_grad_(), "adder", {"weight": layer.weight.detach()}, layer.bias.detach(),
                        padding=1, grad=ADDER)
        assert "grad=" in repr(layer) and ref.shape == (2, 4, 6, 6)
        # a callable gives the same partials as the string
        y1 = lc.conv2d(x, "adder", {"weight": layer.weight}, padding=1, grad={"weight": lambda x, weight: x - weight})
        y2 = lc.conv2d(x, "adder", {"weight": layer.weight}, padding=1, grad={"weight": "x - weight"})
        g1 = torch.autograd.grad(y1.sum(), layer.weight)[0]
        g2 = torch.autograd.grad(y2.sum(), layer.weight)[0]
        assert torch.equal(g1, g2)

    def test_refused_clearly():
        x, w = torch.randn(1, 2, 5, 5, requires_grad=True), {"weight": torch.randn(3, 2, 3, 3, requires_grad=True)}
        with pytest.raises(ValueError, match="not a variable of the op"):
            lc.conv2d(x, "adder", w, grad={"W": "1"})
        with pytest.raises(ValueError, match="does not have"):
            lc.conv2d(x, "adder", w, grad={"x": "A * x"})
        with pytest.raises(TypeError, match="must be a dict"):
            lc.conv2d(x, "adder", w, grad="x - weight")
        with pytest.raises(ValueError, match="cannot run"):  # the reference is the exact definition
            lc.conv2d(x, "adder", w, grad=ADDER, backend="reference")
        with pytest.raises(ValueError):
            lc.Conv2d(2, 3, 3, op="adder", grad={"nope": "x"})
        y = lc.conv2d(x, "adder", w, grad=ADDER)
        with pytest.raises(NotImplementedError, match="grad= overrides"):
            torch.autograd.grad(y.sum(), x, create_graph=True)
        with pytest.raises(NotImplementedError, match="eager mode only"):
            torch.func.grad(lambda t: lc.conv2d(t, "adder", w, grad=ADDER).sum())(x.detach())

else:

    @pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
    def test_triton_matches_the_hand_computation(reduce):
        _check("triton", reduce, torch.float32, 1e-4)
