"""Second derivatives, in-place detection and torch.func through the CUDA direct path (the triton
Function that "auto" picks there). The CPU side: tests/test_autograd_higher.py,
tests/test_func_transforms.py. Expected values: the float64 reference backend, on the same GPU.
"""
import pytest
import torch
from torch.func import grad, vmap

import lambdaconv as lc
from lambdaconv.ir import resolve_op

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SIG = "sigmoid(A*x)*B"
TOL = 1e-4  # float32 compute against the float64 reference, relative to the result's norm


def _inputs(op):
    g = torch.Generator().manual_seed(0)
    # values spread apart: no max ties and no |x - w| kinks between the float32 and float64 runs
    x = torch.randn(2, 3, 8, 8, generator=g) + torch.linspace(0, 3, 384).reshape(2, 3, 8, 8)
    ws = {n: 0.5 * torch.randn(4, 3, 3, 3, generator=g) for n in resolve_op(op).weight_names}
    b = torch.randn(4, generator=g)
    cuda = lambda t: t.to("cuda").requires_grad_()  # noqa: E731
    return cuda(x), {n: cuda(w) for n, w in ws.items()}, cuda(b)


def _double(x, ws, b):
    leaf = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    return leaf(x), {n: leaf(w) for n, w in ws.items()}, leaf(b)


def _assert_near(got, want):
    for i, (g, r) in enumerate(zip(got, want)):
        err = ((g.double() - r).norm() / r.norm().clamp_min(1e-30)).item()
        assert err <= TOL, f"tensor {i}: relative error {err:.3g}"


def _penalty(op, backend, x, ws, b, reduce):
    y = lc.conv2d(x, op, ws, b, padding=1, reduce=reduce, backend=backend)
    if backend == "auto":
        assert y.grad_fn.name() == "TritonConvBackward"
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    return torch.autograd.grad(y.mean() + 10 * (gx.norm() - 1) ** 2, [x, *ws.values(), b])


@pytest.mark.parametrize("op,reduce", [(SIG, None), (SIG, "logsumexp"), ("adder", "mean"), ("dilation", None)])
def test_gradient_penalty_matches_reference(op, reduce):
    x, ws, b = _inputs(op)
    _assert_near(_penalty(op, "auto", x, ws, b, reduce), _penalty(op, "reference", *_double(x, ws, b), reduce))


@pytest.mark.parametrize("op", ["adder", "dilation", SIG])
def test_inplace_weight_update_raises(op):
    x, ws, b = _inputs(op)
    y = lc.conv2d(x, op, ws, b, padding=1)
    with torch.no_grad():
        next(iter(ws.values())).mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("op", ["adder", "dilation", SIG])
def test_vmap_and_grad_match_reference(op):
    x, ws, b = _inputs(op)
    names = list(ws)

    def loss(backend):
        def f(x, *w):
            return lc.conv2d(x[None], op, dict(zip(names, w)), b.detach(), padding=1, backend=backend).pow(2).sum()
        return f

    per_sample = vmap(grad(loss("auto"), argnums=1), in_dims=(0,) + (None,) * len(ws))
    got = per_sample(x.detach(), *(w.detach() for w in ws.values()))
    xd, wd, _ = _double(x, ws, b)
    want = [torch.autograd.grad(loss("reference")(xd[i], *wd.values()), wd[names[0]])[0] for i in range(2)]
    _assert_near(got, want)
