"""torch.func transforms (vmap, grad, jacrev, jvp, hessian) and forward-mode AD through every op.

Under a transform functional.convnd runs the composite definition (direct ops) or decompose's aten
ops (backends/composite.py). Each result is compared with the same quantity computed without the
transform, by the ordinary path (fast kernels, plain autograd), so the two routes check each other.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch.func import functional_call, grad, hessian, jacrev, jvp, vmap

import lambdaconv as lc
from conftest import make_inputs
from lambdaconv.ir import PRESETS, REDUCES, resolve_op

OPS = list(PRESETS) + ["sigmoid(A*x)*B", "-abs(x-W)*A"]
CASES = [(op, r) for op in OPS for r in REDUCES]
IDS = [f"{op}-{r}" for op, r in CASES]
KW = dict(padding=1)


def _setup(op, reduce, n=2, size=(3, 3), seed=0):
    names = resolve_op(op).weight_names
    x, ws, b = make_inputs(2, n, 2, size, {nm: (2, 2, 3, 3) for nm in names}, seed=seed)
    x, b = x.detach(), b.detach()
    ws = {k: v.detach() for k, v in ws.items()}

    def f(x, *w):
        return lc.conv2d(x, op, dict(zip(ws, w)), b, reduce=reduce, **KW)

    return f, x, tuple(ws.values())


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("op,reduce", CASES, ids=IDS)
def test_vmap(op, reduce):
    f, x, w = _setup(op, reduce, n=3)
    # over unbatched samples (C, H, W), and over a batch of weight sets with the input fixed
    _close(vmap(f, in_dims=(0,) + (None,) * len(w))(x, *w), f(x, *w))
    ws = tuple(torch.stack([t, 0.5 * t]) for t in w)
    _close(vmap(f, in_dims=(None,) + (0,) * len(w))(x, *ws), torch.stack([f(x, *w), f(x, *(0.5 * t for t in w))]))


@pytest.mark.parametrize("op,reduce", CASES, ids=IDS)
def test_grad(op, reduce):
    f, x, w = _setup(op, reduce)

    def loss(x, *w):
        return (f(x, *w) ** 2).sum()  # nonlinear in y, so every gradient depends on y

    argnums = tuple(range(1 + len(w)))
    got = grad(loss, argnums=argnums)(x, *w)
    leaves = [t.clone().requires_grad_() for t in (x, *w)]
    want = torch.autograd.grad(loss(*leaves), leaves)
    for g, r in zip(got, want):
        _close(g, r)


@pytest.mark.parametrize("op,reduce", CASES, ids=IDS)
def test_jacrev(op, reduce):
    f, x, w = _setup(op, reduce, n=1)
    got = jacrev(f, argnums=(0, 1))(x, *w)
    want = torch.autograd.functional.jacobian(lambda x, w0: f(x, w0, *w[1:]), (x, w[0]))
    for g, r in zip(got, want):
        _close(g, r)


def _jacobian_times(f, x, w, tx, tw):
    """J_x tx + J_w0 tw from the ordinary path's Jacobian (first-order backward only)."""
    jx, jw = torch.autograd.functional.jacobian(lambda x, w0: f(x, w0, *w[1:]), (x, w[0]))
    y_dims = jx.dim() - x.dim()
    return (jx * tx).sum(tuple(range(y_dims, jx.dim()))) + (jw * tw).sum(tuple(range(y_dims, jw.dim())))


@pytest.mark.parametrize("op,reduce", CASES, ids=IDS)
def test_jvp(op, reduce):
    f, x, w = _setup(op, reduce, n=1)
    tx, tw = torch.randn_like(x), torch.randn_like(w[0])
    y, jv = jvp(lambda x, w0: f(x, w0, *w[1:]), (x, w[0]), (tx, tw))
    _close(y, f(x, *w))
    _close(jv, _jacobian_times(f, x, w, tx, tw))


@pytest.mark.parametrize("op,reduce", CASES, ids=IDS)
def test_hessian(op, reduce):
    f, x, w = _setup(op, reduce, n=1, size=(2, 3))

    def loss(x):
        y = f(x, *w)
        return (y.sin() * y).sum()

    # torch.func's forward-over-reverse against autograd's reverse-over-reverse (create_graph)
    _close(hessian(loss)(x), torch.autograd.functional.hessian(loss, x))


@pytest.mark.parametrize("op", ["adder", "quadratic", "sigmoid(A*x)*B"])
def test_forward_ad_dual_tensors(op):
    f, x, w = _setup(op, None, n=1)
    tx = torch.randn_like(x)
    with fwad.dual_level():
        out = fwad.unpack_dual(f(fwad.make_dual(x, tx), *w))
    _close(out.primal, f(x, *w))
    _close(out.tangent, _jacobian_times(f, x, w, tx, torch.zeros_like(w[0])))


@pytest.mark.parametrize("op", ["adder", "quadratic", "sigmoid(A*x)*B"])
def test_per_sample_gradients_of_a_module(op):
    # the torch.func recipe: vmap over samples of grad of a functional_call of the layer
    torch.manual_seed(0)
    layer = lc.Conv2d(2, 3, 3, padding=1, op=op).double()
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)

    def loss(p, xi):
        return functional_call(layer, p, (xi[None],)).pow(2).sum()

    got = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        layer.zero_grad()
        layer(x[i:i + 1]).pow(2).sum().backward()
        for k, p in layer.named_parameters():
            _close(got[k][i], p.grad)
