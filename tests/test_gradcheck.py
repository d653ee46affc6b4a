"""torch.autograd.gradcheck of every backend (float64), against finite differences."""
import pytest
import torch

from conftest import CONV, backends_for, make_inputs

CASES = [
    ("adder", None, dict(padding=1, stride=2)),
    ("offset", "mean", dict(padding=1, padding_mode="ignore")),
    ("dilation", None, dict(padding=1, padding_mode="ignore")),
    ("erosion", None, dict(padding=1, dilation=2)),
    ("sigmoid(A*x)*B", "logsumexp", dict(padding=1, padding_mode="reflect")),
    ("tanh(x*A+B)", "sum", dict(padding=1, groups=2, padding_mode="circular")),
    ("A*x**2 + B*x", "sum", dict(padding="same", padding_mode="replicate")),
]


@pytest.mark.parametrize("op,reduce,kw", CASES, ids=[c[0] + "-" + str(c[1]) for c in CASES])
def test_gradcheck(op, reduce, kw):
    from lambdaconv.ir import resolve_op
    names = resolve_op(op).weight_names
    g = kw.get("groups", 1)
    x, ws, b = make_inputs(2, 2, 2, (4, 5), {n: (2, 2 // g, 3, 3) for n in names})
    # separate the values so max/min have no near-ties within the finite-difference step
    x = (x.detach() + torch.linspace(0, 3, x.numel(), dtype=torch.float64).reshape(x.shape)).requires_grad_()
    for backend in backends_for(2, x, op, ws, b, reduce=reduce, **kw):
        def f(x, b, *w):
            return CONV[2](x, op, dict(zip(ws, w)), b, reduce=reduce, backend=backend, **kw)
        assert torch.autograd.gradcheck(f, (x, b, *ws.values()), eps=1e-6, atol=1e-6), backend
