"""grad= overrides and transposed convolutions on CUDA tensors, against the CPU hand computation
(tests/test_grad_override.py) and the float64 loop definition (tests/test_transpose.py)."""
import pytest
import torch

import lambdaconv as lc
from lambdaconv import reductions
from lambdaconv.ir import resolve_op

from test_grad_override import _check
from test_transpose import CASES, definition

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("reduce", [r.name for r in reductions.all_records() if r.backward != "softmax"])
def test_grad_override_on_the_gpu_backward(reduce):
    _check("auto", reduce, torch.float32, 1e-4, device="cuda")


@pytest.mark.parametrize("reduce", reductions.names())
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-s{c[3]}")
@pytest.mark.parametrize("op", ["adder", "linear", "offset"])
def test_transposed_on_cuda_matches_the_definition(op, case, reduce):
    d, xs, wsh, stride, padding, out_pad, groups, dil = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(xs, generator=g, dtype=torch.float64)
    ws = {n: torch.randn(wsh, generator=g, dtype=torch.float64) for n in resolve_op(op).weight_names}
    b = torch.randn(wsh[1] * groups, generator=g, dtype=torch.float64)
    want = definition(x, op, ws, b, stride, padding, out_pad, groups, dil, reduce)
    fn = getattr(lc, f"conv_transpose{d}d")
    xc = x.float().cuda().requires_grad_()
    wc = {n: t.float().cuda().requires_grad_() for n, t in ws.items()}
    y = fn(xc, op, wc, b.float().cuda(), stride, padding, out_pad, groups, dil, reduce=reduce)
    assert y.is_cuda and y.shape == want.shape
    assert torch.allclose(y.double().cpu(), want, atol=1e-4, rtol=1e-4, equal_nan=True)
    finite = torch.isfinite(y)
    if finite.any():
        gx, = torch.autograd.grad(y[finite].sum(), xc)
        assert torch.isfinite(gx).all()
