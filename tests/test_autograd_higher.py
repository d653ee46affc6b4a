"""Second derivatives (create_graph=True) and in-place detection through every op, on CPU.

The direct ops' fast backward is once-differentiable; under create_graph=True the backward goes
through the composite definition (backends/composite.py). Everything is compared with the float64
reference backend or checked with torch's gradgradcheck (finite differences of the gradient).
torch.func transforms: tests/test_func_transforms.py. The triton Function: tests/test_autograd_triton.py.
"""
import pytest
import torch

import lambdaconv as lc
from conftest import CONV, make_inputs
from lambdaconv import library
from lambdaconv.functional import prepare
from lambdaconv.ir import PRESETS, resolve_op

SIG = "sigmoid(A*x)*B"
# (op, reduce): every preset with its own reduction, the direct op, and the reductions
# whose backward weights each tap by the forward's values (logsumexp) or by a count (mean)
GG_CASES = [(p, None) for p in PRESETS] + [(SIG, None), (SIG, "logsumexp"), (SIG, "mean"), ("adder", "mean"),
                                           ("adder", "logsumexp"), (SIG, "max")]
KW = dict(padding=1)


def _inputs(op, seed=0, dtype=torch.float64, o=2, c=2, size=(3, 4)):
    names = resolve_op(op).weight_names
    x, ws, b = make_inputs(2, 1, c, size, {n: (o, c, 3, 3) for n in names}, dtype=dtype, seed=seed)
    # values spread apart: no max/min ties and no |x - w| kinks within the finite-difference step
    spread = torch.linspace(0, 3, x.numel(), dtype=torch.float64).reshape(x.shape).to(dtype)
    return (x.detach() + spread).requires_grad_(), ws, b


@pytest.mark.parametrize("backend", ["auto", "tiled"])
@pytest.mark.parametrize("op,reduce", GG_CASES, ids=[f"{o}-{r}" for o, r in GG_CASES])
def test_gradgradcheck(op, reduce, backend):
    x, ws, b = _inputs(op)

    def f(x, b, *w):
        return lc.conv2d(x, op, dict(zip(ws, w)), b, reduce=reduce, backend=backend, **KW)

    assert torch.autograd.gradgradcheck(f, (x, b, *ws.values()), eps=1e-6, atol=1e-5)


def _penalty_grads(op, backend, x, ws, b, reduce=None, weight=10.0):
    """The issue's gradient penalty: the gradients of y.mean() + weight (|dy.sum/dx| - 1)^2."""
    y = lc.conv2d(x, op, ws, b, reduce=reduce, backend=backend, **KW)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    loss = y.mean() + weight * (gx.norm() - 1) ** 2
    return torch.autograd.grad(loss, [x, *ws.values(), b])


def _ref_copies(x, ws, b):
    leaf = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    return leaf(x), {n: leaf(w) for n, w in ws.items()}, leaf(b)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("backend", ["auto", "tiled"])
@pytest.mark.parametrize("op,reduce", [(SIG, None), ("adder", None), ("dilation", None), (SIG, "logsumexp")])
def test_gradient_penalty_matches_reference(op, reduce, backend, dtype, tol):
    x, ws, b = _inputs(op, seed=3, dtype=dtype, o=4, c=3, size=(6, 6))
    got = _penalty_grads(op, backend, x, ws, b, reduce)
    want = _penalty_grads(op, "reference", *_ref_copies(x, ws, b), reduce)
    for name, g, r in zip(["x", *ws, "bias"], got, want):
        assert g.dtype == dtype, name
        err = ((g.double() - r).norm() / r.norm().clamp_min(1e-30)).item()
        assert err <= tol, f"grad {name}: relative error {err:.3g}"
    if op == SIG:  # smooth: the penalty's own part of A.grad is large (dropping it fails the test)
        penalty = want[1] - _penalty_grads(op, "reference", *_ref_copies(x, ws, b), reduce, weight=0.0)[1]
        assert penalty.norm() > 0.1 * want[1].norm()


@pytest.mark.parametrize("backend", ["auto", "tiled"])
@pytest.mark.parametrize("op", [SIG, "adder", "quadratic"])
def test_hessian_matches_reference(op, backend):
    x, ws, b = _inputs(op, o=2, c=2, size=(3, 3))
    names = list(ws)

    def loss(backend):
        def f(x, w0):
            y = lc.conv2d(x, op, {**ws, names[0]: w0}, b, backend=backend, **KW)
            return (y.sin() * y).sum()  # nonlinear in y: the Hessian has every kind of term
        return f

    args = (x.detach(), ws[names[0]].detach())
    got = torch.autograd.functional.hessian(loss(backend), args)
    want = torch.autograd.functional.hessian(loss("reference"), args)
    total = 0.0
    for gi, wi in zip(got, want):
        for g, r in zip(gi, wi):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)
            total += r.abs().sum().item()
    assert total > 1.0  # not the zeros a once-differentiable backward gave


def test_same_tensor_as_two_weights():
    # each weight slot gets its own gradient; their sum is the tensor's (create_graph path)
    x, ws, b = _inputs(SIG, seed=5)
    w = ws["A"]
    got = _penalty_grads(SIG, "tiled", x, {"A": w, "B": w}, b)
    xr, wr, br = _ref_copies(x, {"A": w}, b)
    want = _penalty_grads(SIG, "reference", xr, {"A": wr["A"], "B": wr["A"]}, br)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_first_order_gradients_need_no_graph():
    # without create_graph the fast backward runs, and its gradients hold no graph
    x, ws, b = _inputs(SIG)
    y = lc.conv2d(x, SIG, ws, b, backend="tiled", **KW)
    grads = torch.autograd.grad(y.sum(), [x, *ws.values(), b])
    assert not any(g.requires_grad for g in grads)


@pytest.mark.parametrize("backend", ["auto", "tiled"])
@pytest.mark.parametrize("op", ["adder", "dilation", SIG])
def test_inplace_weight_update_raises(op, backend):
    x, ws, b = _inputs(op, dtype=torch.float32)
    y = lc.conv2d(x, op, ws, b, backend=backend, **KW)
    opt = torch.optim.SGD(list(ws.values()), lr=0.1)
    y.sum().backward(retain_graph=True)
    opt.step()  # changes the weights in place, as between two backward passes of a training step
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("op", ["adder", SIG])
def test_inplace_input_update_raises(op):
    x, ws, b = _inputs(op, dtype=torch.float32)
    xi = x.detach().clone().requires_grad_()
    h = xi * 1.0  # a non-leaf input, changed in place after the conv read it
    y = lc.conv2d(h, op, ws, b, backend="tiled", **KW)
    with torch.no_grad():
        h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def _direct_custom_op(op, x, ws, b):
    """The compile route's custom op lambdaconv::direct_conv, called eagerly."""
    names = tuple(ws)
    _, _, _, call, _ = prepare(2, x, op, ws, b, 1, 1, 1, 1, None, "zeros", "auto")
    cfg = library._config(2, call, names, 1, 1, 1, 1, "zeros", "auto")
    return lambda x, b, *w: torch.ops.lambdaconv.direct_conv(x, list(w), b, str(call.spec.expr), cfg)


@pytest.mark.parametrize("op", [SIG, "adder", "dilation"])
def test_custom_op_second_derivatives(op):
    x, ws, b = _inputs(op)
    f = _direct_custom_op(op, x, ws, b)
    assert torch.autograd.gradgradcheck(f, (x, b, *ws.values()), eps=1e-6, atol=1e-5)


def test_custom_op_penalty_matches_reference():
    x, ws, b = _inputs(SIG, seed=4)
    f = _direct_custom_op(SIG, x, ws, b)
    y = f(x, b, *ws.values())
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    got = torch.autograd.grad(y.mean() + 10 * (gx.norm() - 1) ** 2, list(ws.values()))
    want = _penalty_grads(SIG, "reference", *_ref_copies(x, ws, b))[1:3]
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_conv1d_conv3d_gradgradcheck():
    # the composite path's geometry is the reference's: other ranks, stride, dilation, groups, ignore
    for d, size, kw in ((1, (7,), dict(padding=2, stride=2, dilation=2, groups=2)),
                        (3, (3, 3, 3), dict(padding=1, padding_mode="ignore"))):
        g = kw.get("groups", 1)
        x, ws, b = make_inputs(d, 1, 2, size, {"A": (2, 2 // g) + (2,) * d, "B": (2, 1) + (1,) * d})

        def f(x, b, *w):
            return CONV[d](x, SIG, dict(zip(ws, w)), b, backend="tiled", **kw)

        assert torch.autograd.gradgradcheck(f, (x, b, *ws.values()), eps=1e-6, atol=1e-5), d
