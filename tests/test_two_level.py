"""Two-level reductions, reduce=(inner, outer): OUTER over the group's channels of INNER over each
channel's taps, for every pair of registered reductions, against the float64 definition of
tests/unfold_definition.py (forward and every gradient), on every backend that runs it."""
import itertools

import pytest
import torch

import lambdaconv as lc
from lambdaconv import reductions
from lambdaconv.backends import registry
from conftest import CONV, TOL, rel_err
from unfold_definition import definition

OPS = {"x + W": lambda x, W: x + W, "x*W": lambda x, W: x * W, "-abs(x-W)": lambda x, W: -(x - W).abs()}
PAIRS = list(itertools.product(reductions.names(), repeat=2))
GEO = (2, 7, 3, 2, 1, 1, 2, "ignore")  # (dims, size, kernel, stride, padding, dilation, groups, padding_mode)
GEOMETRIES = [
    (2, 6, 3, 1, 1, 1, 1, "zeros"),
    (2, 7, 3, 1, 2, 2, 2, "reflect"),
    (2, 5, 2, 1, "same", 1, 1, "ignore"),
    (1, 9, 3, 2, 1, 1, 2, "replicate"),
    (1, 9, 3, 1, 1, 1, 1, "circular"),
    (3, 4, 3, 1, 1, 1, 2, "ignore"),
]


def _inputs(geo, seed=0, n=2, c=4, o=4):
    d, size, k, stride, padding, dilation, groups, mode = geo
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c) + (size,) * d, generator=g, dtype=torch.float64)
    w = torch.randn((o, c // groups) + (k,) * d, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(o, generator=g, dtype=torch.float64)
    return d, x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode)


def _check(op, pair, geo, backend="auto"):
    d, x, w, b, kw = _inputs(geo)
    leaves_r = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = definition(leaves_r[0], {"W": leaves_r[1]}, {"y": OPS[op]}, pair, None, (), leaves_r[2], **kw)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    try:
        y = CONV[d](leaves[0], op, {"W": leaves[1]}, leaves[2], reduce=pair, backend=backend, **kw)
    except ValueError as err:
        if "cannot run this convolution" in str(err):
            pytest.skip(f"{backend}: {str(err).splitlines()[0]}")
        raise
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = [y, *torch.autograd.grad(y, leaves, gy)]
    want = [ref, *torch.autograd.grad(ref, leaves_r, gy)]
    for name, a, r in zip(("output", "grad x", "grad W", "grad bias"), got, want):
        err = rel_err(a, r)
        assert err <= TOL[torch.float64], f"{op} {pair} {backend}: {name} relative error {err:.3g}"


@pytest.mark.parametrize("pair", PAIRS, ids="-".join)
@pytest.mark.parametrize("op", OPS)
def test_every_pair(op, pair):
    _check(op, pair, GEO)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: f"{g[0]}d-s{g[3]}-p{g[4]}-d{g[5]}-g{g[6]}-{g[7]}")
@pytest.mark.parametrize("pair", [("max", "sum"), ("sum", "max"), ("logsumexp", "mean")], ids="-".join)
def test_geometries(pair, geo):
    _check("x + W", pair, geo)


@pytest.mark.parametrize("backend", [n for n in registry.names()[1:]])
@pytest.mark.parametrize("pair", [("max", "sum"), ("sum", "min")], ids="-".join)
def test_each_backend(pair, backend):
    _check("x + W" if pair[0] == "max" else "x*W", pair, GEOMETRIES[1], backend)


@pytest.mark.parametrize("pair", [("max", "sum"), ("min", "logsumexp"), ("mean", "max")], ids="-".join)
def test_gradcheck(pair):
    d, x, w, b, kw = _inputs((2, 4, 3, 1, 1, 1, 1, "ignore"), seed=2, n=1, c=2, o=2)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: lc.conv2d(x, "x + W", {"W": w}, b, reduce=pair, **kw), leaves,
                                    fast_mode=True)


def test_max_plus_layer_and_its_terms():
    """max-sum morphology as a layer (the dilation preset, channels summed), and two-level terms
    beside single-level ones, weight-free and x-free terms included."""
    torch.manual_seed(0)
    layer = lc.Conv2d(4, 6, 3, padding=1, op="dilation", reduce=("max", "sum"), padding_mode="ignore")
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    layer = layer.double()
    y = layer(x)
    ref = definition(x, {"W": layer.weight}, {"y": lambda x, W: x + W}, ("max", "sum"), None, (), layer.bias,
                     padding=1, padding_mode="ignore")
    assert rel_err(y, ref) < 1e-12
    assert "reduce=('max', 'sum')" in repr(layer)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    ops = {"m": "x + W", "a": "abs(x)", "c": "W*W", "s": "x*W"}
    red = {"m": ("max", "sum"), "a": ("max", "mean"), "c": ("max", "sum"), "s": "sum"}
    got = lc.conv2d(x, ops, {"W": w}, padding=1, reduce=red, post="m + a * c - s")
    want = definition(x, {"W": w}, {"m": lambda x, W: x + W, "a": lambda x: x.abs(), "c": lambda x, W: W * W,
                                    "s": lambda x, W: x * W}, red, lambda m, a, c, s: m + a * c - s, (), None,
                      padding=1)
    assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("backend", ["auto", "tiled", "reference"])
def test_ties_and_second_derivatives(backend):
    """Ties (a constant input with W = 0): the gradient goes to the first winner, as torch.max's;
    create_graph=True gives gradients that are differentiable again."""
    x = torch.ones(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.zeros(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    y = lc.conv2d(x, "x + W", {"W": w}, padding=1, reduce=("max", "sum"), backend=backend)
    ref = definition(x, {"W": w}, {"y": lambda x, W: x + W}, ("max", "sum"), None, (), None, padding=1)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for a, r in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(ref, (x, w), gy)):
        assert torch.allclose(a, r, rtol=0, atol=1e-12)  # the same winners; sums in another order
    d, x2, w2, b2, kw = _inputs((2, 4, 3, 1, 1, 1, 1, "zeros"), seed=4, n=1, c=2, o=2)
    leaves = [x2.requires_grad_(), w2.requires_grad_()]
    assert torch.autograd.gradgradcheck(
        lambda x, w: lc.conv2d(x, "x*W", {"W": w}, reduce=("logsumexp", "sum"), backend=backend, **kw), leaves,
        fast_mode=True)
