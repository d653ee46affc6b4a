"""op as a dict of named terms, post=, and layers from the literature built from them (issue 19),
against the float64 definition of tests/unfold_definition.py: forward and the gradients to x,
every weight and the bias, over geometries (stride, padding modes, dilation, groups, 1-3 d) and
every registered backend that runs the call."""
import pickle

import pytest
import torch

import lambdaconv as lc
from lambdaconv import functional, terms
from lambdaconv.backends import registry, stacked
from conftest import CONV, TOL, rel_err
from unfold_definition import definition

SCS = "sign(s) * (abs(s) / ((sqrt(nx) + q) * (sqrt(nw) + q))) ** p"  # the issue's example, verbatim

# name -> (op terms, reduce, post, weight shapes ("full" = (O, C/groups, *k)), definition terms, post)
MODELS = {
    "kervolution_poly": ({"s": "x*W"}, "sum", "(s + c) ** 3", {"W": "full", "c": ()},
                         {"s": lambda x, W: x * W}, lambda s, c: (s + c) ** 3),
    "kervolution_gauss": ({"d": "(x-W)**2"}, "sum", "exp(-gamma * d)", {"W": "full", "gamma": "O"},
                          {"d": lambda x, W: (x - W) ** 2}, lambda d, gamma: torch.exp(-gamma * d)),
    "scs": ({"s": "x*W", "nx": "x*x", "nw": "W*W"}, "sum", SCS, {"W": "full", "p": "O", "q": ()},
            {"s": lambda x, W: x * W, "nx": lambda x: x * x, "nw": lambda x, W: W * W},
            lambda s, nx, nw, p, q: torch.sign(s) * (s.abs() / ((nx.sqrt() + q) * (nw.sqrt() + q))) ** p),
    "ratio": ({"num": "A*(x-B)", "den": "abs(x-B)"}, {"num": "sum", "den": "mean"}, "num / (1 + den)",
              {"A": "full", "B": "full"}, {"num": lambda x, A, B: A * (x - B), "den": lambda x, B: (x - B).abs()},
              lambda num, den: num / (1 + den)),
    "max_sum_morphology": ("x + W", ("max", "sum"), None, {"W": "full"}, {"y": lambda x, W: x + W}, None),
}

# (dims, size, kernel, stride, padding, dilation, groups, padding_mode)
GEOMETRIES = [
    (2, 6, 3, 1, 1, 1, 1, "zeros"),
    (2, 7, 3, 2, 1, 1, 2, "reflect"),
    (2, 7, 3, 1, 2, 2, 1, "ignore"),
    (2, 5, 2, 1, "same", 1, 2, "ignore"),
    (1, 9, 3, 2, 1, 1, 2, "replicate"),
    (1, 9, 3, 1, 2, 2, 1, "circular"),
    (3, 4, 3, 1, 1, 1, 1, "zeros"),
    (3, 5, 3, (1, 2, 1), 1, 1, 2, "ignore"),
]


def _inputs(model, geo, seed=0, n=2, c=4, o=4):
    _, _, _, shapes, _, _ = MODELS[model]
    d, size, k, stride, padding, dilation, groups, mode = geo
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c) + (size,) * d, generator=g, dtype=torch.float64)
    ws = {}
    for name, s in shapes.items():
        shape = (o, c // groups) + (k,) * d if s == "full" else (o,) if s == "O" else ()
        ws[name] = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
    if "p" in ws:  # sharpened cosine similarity: an exponent near 2, a positive offset
        ws["p"], ws["q"] = 1.5 + ws["p"].abs(), ws["q"].abs() + 0.1
    if "gamma" in ws:
        ws["gamma"] = ws["gamma"].abs()
    b = torch.randn(o, generator=g, dtype=torch.float64)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode)
    return d, x, ws, b, kw


def _backends():
    return [n for n in registry.names() if n != "reference"]


def _grads(y, leaves, seed=1):
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y.dtype)
    return torch.autograd.grad(y, leaves, gy, allow_unused=True)


def _check(model, geo, backend, dtype=torch.float64):
    op, reduce, post, _, dterms, dpost = MODELS[model]
    d, x, ws, b, kw = _inputs(model, geo)
    post_only = tuple(n for n in ws if n not in {w for f in dterms.values()
                                                 for w in f.__code__.co_varnames[1:f.__code__.co_argcount]})
    leaves_r = [t.clone().requires_grad_() for t in [x, *ws.values(), b]]
    xr, *wr, br = leaves_r
    ref = definition(xr, dict(zip(ws, wr)), dterms, reduce if isinstance(reduce, (dict, tuple)) else reduce, dpost,
                     post_only, br, **kw)
    leaves = [t.to(dtype).requires_grad_() for t in [x, *ws.values(), b]]
    xl, *wl, bl = leaves
    try:
        y = CONV[d](xl, op, dict(zip(ws, wl)), bl, reduce=reduce, post=post, backend=backend, **kw)
    except ValueError as err:
        if "cannot run this convolution" in str(err):
            pytest.skip(f"{backend}: {str(err).splitlines()[0]}")
        raise
    names = ["output", "grad x"] + [f"grad {n}" for n in ws] + ["grad bias"]
    got = [y] + list(_grads(y, leaves))
    want = [ref] + list(_grads(ref, leaves_r))
    for name, a, r in zip(names, got, want):
        assert a is not None, name
        err = rel_err(a, r)
        assert err <= TOL[dtype], f"{model} {backend}: {name} relative error {err:.3g}"


def _gid(g):
    return f"{g[0]}d-s{g[3]}-p{g[4]}-d{g[5]}-g{g[6]}-{g[7]}"


@pytest.mark.parametrize("geo", GEOMETRIES, ids=_gid)
@pytest.mark.parametrize("model", MODELS)
def test_matches_definition(model, geo):
    _check(model, geo, "auto")


# every registered backend, named for every term, on one geometry ("ignore" padding, dilation; a
# backend that cannot run some term refuses the call, and the test is skipped with its reason).
# One: a compiling backend (Inductor) compiles once per op and shape, seconds each in a fresh CI cache
@pytest.mark.parametrize("backend", _backends()[1:])
@pytest.mark.parametrize("geo", GEOMETRIES[2:3], ids=_gid)
@pytest.mark.parametrize("model", MODELS)
def test_each_backend(model, geo, backend):
    _check(model, geo, backend)


@pytest.mark.parametrize("model", MODELS)
def test_float32(model):
    _check(model, GEOMETRIES[1], "auto", torch.float32)


@pytest.mark.parametrize("model", MODELS)
def test_gradcheck(model):
    op, reduce, post, _, _, _ = MODELS[model]
    d, x, ws, b, kw = _inputs(model, (2, 4, 3, 1, 1, 1, 1, "zeros"), seed=3, n=1, c=2, o=2)
    leaves = [t.requires_grad_() for t in [x, *ws.values(), b]]

    def f(x, *rest):
        return lc.conv2d(x, op, dict(zip(ws, rest[:-1])), rest[-1], reduce=reduce, post=post, **kw)

    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_scs_module_as_in_the_issue():
    torch.manual_seed(0)
    layer = lc.Conv2d(3, 8, 3, padding=1, op={"s": "x*W", "nx": "x*x", "nw": "W*W"}, post=SCS,
                      shapes={"p": "filter", "q": "scalar"}, init={"p": 2.0, "q": 0.1})
    assert dict((n, tuple(p.shape)) for n, p in layer.named_parameters()) == \
        {"W": (8, 3, 3, 3), "p": (8,), "q": (), "bias": (8,)}
    assert torch.all(layer.p == 2.0) and torch.allclose(layer.q, torch.tensor(0.1))
    x = torch.randn(2, 3, 6, 6)
    y = layer(x)
    ref = lc.conv2d(x, layer.op, {"W": layer.W, "p": layer.p, "q": layer.q}, layer.bias, padding=1, post=SCS)
    assert torch.equal(y, ref)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    assert "post=" in repr(layer)
    restored = lc.Conv2d(3, 8, 3, padding=1, op=layer.op, post=SCS, shapes=layer.shapes)
    restored.load_state_dict(layer.state_dict())
    assert torch.equal(restored(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(layer))(x), y)  # string terms and post pickle with the layer


def test_callable_post_and_callable_terms():
    x, w = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    p = torch.rand(4, dtype=torch.float64) + 1
    as_str = lc.conv2d(x, {"s": "x*W", "m": "x+W"}, {"W": w, "p": p}, reduce={"s": "sum", "m": "max"},
                       post="s * p + m")
    as_fn = lc.conv2d(x, {"s": lambda x, W: x * W, "m": lambda x, W: x + W}, {"W": w, "p": p},
                      reduce={"s": "sum", "m": "max"}, post=lambda s, m, p: s * p + m)
    assert torch.allclose(as_str, as_fn)


def test_single_op_with_post_names_it_y():
    x, w = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    y = lc.conv2d(x, "-abs(x-W)", {"W": w}, post="relu(y + 5)")
    assert torch.allclose(y, torch.relu(lc.conv2d(x, "-abs(x-W)", {"W": w}) + 5))


def test_weight_free_terms_run_once_per_group(monkeypatch):
    """A term without weights runs with one output channel per group, not one per filter."""
    seen = []
    real = functional.convnd

    def spy(d, x, op, weights, *a, **k):
        seen.append(torch.broadcast_shapes(*(w.shape for w in weights.values()))[0])
        return real(d, x, op, weights, *a, **k)

    monkeypatch.setattr(functional, "convnd", spy)
    x, w = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3)
    lc.conv2d(x, {"s": "x*W", "a": "abs(x)"}, {"W": w}, groups=2, reduce={"s": "sum", "a": "max"}, post="s + a")
    # the call itself (6 filters), then the direct weight-free term with one row per group; the
    # stacked term x*W never calls convnd
    assert seen == [6, 2]
    plan = str(lc.explain({"s": "x*W", "nx": "x*x", "nw": "W*W"}, post=SCS, input=x[:, :2],
                          weights={"W": w[:, :1].expand(6, 2, 3, 3), "p": torch.ones(6), "q": 0.1}))
    # the 6 filters over x; x*x (the same for every filter) in a narrow conv of its own
    assert "input [x] (1 x 2 channels) -> 6 output channels" in plan and "constant: no x" in plan
    assert "input [x**2] -> 1 output channel(s) per group" in plan


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("geo", [(2, 1, "zeros"), (2, 2, "ignore"), (1, 2, "reflect")])
def test_weight_free_parts_run_in_a_narrow_conv(geo, reduce, monkeypatch):
    """(x-W)**2 = x**2 - 2xW + W**2: its x**2 part is the same for every filter, so the wide conv
    reads x alone and x**2 goes through one row of ones per group (as SCS's x*x term); the result
    is the tiled path's, forward and gradients."""
    pad, groups, mode = geo
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // groups, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    op = {"d": "(x-W)**2", "s": "x*W", "n": "x*x"}
    kw = dict(padding=pad, groups=groups, padding_mode=mode, reduce=reduce, post="d + s * n")
    seen = []
    real = stacked._CONV[2]
    monkeypatch.setitem(stacked._CONV, 2, lambda S, H, *a: (seen.append((S.shape[1], H.shape[0])), real(S, H, *a))[1])
    y = lc.conv2d(x, op, {"W": w}, **kw)
    # [x] -> d's and s's filters; [x**2] -> n's row and d's (then "ignore"'s mask convs)
    assert seen[:2] == [(4, 12), (4, 2 * groups)]
    r = lc.conv2d(x, op, {"W": w}, backend="tiled", **kw)
    assert torch.allclose(y, r, atol=1e-10, rtol=1e-10, equal_nan=True)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    fin = torch.isfinite(r)
    for a, b in zip(torch.autograd.grad(y, (x, w), gy.masked_fill(~fin, 0)),
                    torch.autograd.grad(r, (x, w), gy.masked_fill(~fin, 0))):
        assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)


def test_single_op_keeps_its_path(monkeypatch):
    monkeypatch.setattr(terms, "conv_terms", lambda *a, **k: pytest.fail("a single op went through terms"))
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    lc.conv2d(x, "x*W", {"W": w}, reduce="sum")
    lc.Conv2d(3, 4, 3, op="adder")(x)


def test_explain_shows_terms_and_epilogue():
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    plan = lc.explain({"s": "x*W", "m": "abs(x-W)", "t": "x+W"}, {"s": "sum", "m": "max", "t": ("max", "sum")},
                      post="s + m * p + t", input=x, weights={"W": w, "p": torch.ones(4)}, padding=1)
    text = str(plan)
    assert [r[3] for r in plan.terms] == ["stacked", "direct", "two-level"]
    assert "direct (tiled)" in text and "two-level: max over each input channel's taps (fused tile by tile" in text
    assert "post:      s + m * p + t" in text and "(weights: p)" in text


BAD = [
    ({"x": "x*W"}, None, None, ValueError, "term name 'x'"),
    ({"_s": "x*W"}, None, None, ValueError, "term name '_s'"),
    ({"e": "x*W"}, None, None, ValueError, "term name 'e'"),
    ({1: "x*W"}, None, None, TypeError, "term names must be strings"),
    ({"W": "x*W"}, None, None, ValueError, "also a weight name"),
    ({}, None, None, ValueError, "empty dict"),
    ({"s": "x*W", "m": "x+W"}, None, None, ValueError, "give post="),
    ({"s": "x*W", "m": "x+W"}, {"s": "sum"}, "s+m", ValueError, "no entry for term 'm'"),
    ({"s": "x*W"}, {"s": "sum", "z": "max"}, "s", ValueError, "'z', which no term has"),
    ("x*W", {"y": "sum"}, None, TypeError, "op is a single op"),
    ({"s": "x*W"}, ("max",), None, ValueError, "two-level reduce is a pair"),
    ({"s": "x*W"}, "median", None, ValueError, "unknown reduce 'median'"),
    ({"s": "x*W"}, None, "s + foo", ValueError, "post uses 'foo', which is neither a term"),
    ({"s": "x*W"}, None, "s + x", ValueError, "uses x"),
    ({"s": "x*W"}, None, "__import__('os')", ValueError, "post:"),
    ({"s": "x*W"}, None, 3, TypeError, "post must be"),
    ({"s": "x*W"}, None, "s * W", ValueError, "broadcasts to (out_channels,)"),
    ({"s": "x*W"}, None, "s", ValueError, "grad="),
]


@pytest.mark.parametrize("op,reduce,post,exc,msg", BAD, ids=[b[-1] for b in BAD])
def test_errors_before_any_kernel(op, reduce, post, exc, msg, monkeypatch):
    monkeypatch.setattr(stacked, "run", lambda *a, **k: pytest.fail("a kernel ran"))
    monkeypatch.setattr(functional, "_runner", lambda *a, **k: pytest.fail("a kernel ran"))
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    grad = {"x": "1"} if msg == "grad=" else None
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        lc.conv2d(x, op, {"W": w}, reduce=reduce, post=post, grad=grad)


def test_a_later_term_that_cannot_run_raises_before_the_first_runs(monkeypatch):
    monkeypatch.setattr(stacked, "run", lambda *a, **k: pytest.fail("a kernel ran"))
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="backend 'decompose' cannot run"):
        lc.conv2d(x, {"s": "x*W", "m": "abs(x-W)"}, {"W": w}, post="s+m", backend="decompose")
    with pytest.raises(ValueError, match="post reads weight 'p' of shape"):
        lc.conv2d(x, {"s": "x*W"}, {"W": w, "p": torch.ones(3)}, post="s*p")
    with pytest.raises(ValueError, match="used by no term"):
        lc.conv2d(x, {"s": "x*W"}, {"W": w, "p": torch.ones(4)}, post="s")
    with pytest.raises(ValueError, match="read only by post"):
        lc.Conv2d(3, 4, 3, op={"s": "x*W"}, post="s*p", shapes={"p": "full"})


def test_edge_inputs_and_dtypes():
    """meta tensors, zero input channels, an empty batch, unbatched input, bf16 and autocast, torch.compile."""
    ops, red = {"s": "x*W", "nx": "x*x", "nw": "W*W", "m": "abs(x-W)"}, {"s": "sum", "nx": "sum", "nw": "sum",
                                                                          "m": ("max", "sum")}
    post = SCS + " + m"

    def ws(c=3, **f):
        return {"W": torch.randn(4, c, 3, 3, **f), "p": torch.ones(4, **f), "q": 0.1}

    def run(x, w):
        return lc.conv2d(x, ops, w, padding=1, post=post, reduce=red)

    assert run(torch.randn(2, 3, 8, 8, device="meta"), ws(device="meta")).shape == (2, 4, 8, 8)
    w0 = ws(c=0)
    w0["W"].requires_grad_()
    y0 = run(torch.randn(2, 0, 8, 8), w0)
    y0.sum().backward()
    assert y0.shape == (2, 0, 8, 8) and torch.equal(w0["W"].grad, torch.zeros_like(w0["W"]))
    assert run(torch.randn(0, 3, 8, 8), ws()).shape == (0, 4, 8, 8)
    x, w = torch.randn(2, 3, 8, 8), ws()
    y = run(x, w)
    assert torch.allclose(run(x[0], w), y[0], atol=1e-6)
    yb = run(x.bfloat16(), {k: v.bfloat16() if torch.is_tensor(v) else v for k, v in w.items()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = run(x, w)
    assert yb.dtype == ya.dtype == torch.bfloat16
    assert rel_err(yb, y) < 2e-2 and rel_err(ya, y) < 2e-2
    assert rel_err(torch.compile(run)(x, w), y) < 1e-6  # a graph break: the terms call runs eagerly


def test_torch_func_grad_and_vmap():
    ops, red = {"s": "x*W", "nx": "x*x", "m": "abs(x-W)"}, {"s": "sum", "nx": "sum", "m": ("max", "sum")}
    post = "s / (sqrt(nx) + 0.1) + m"
    x, w = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)

    def f(w, x=x):
        return lc.conv2d(x, ops, {"W": w}, padding=1, post=post, reduce=red)

    wr = w.clone().requires_grad_()
    f(wr).square().sum().backward()
    assert torch.allclose(torch.func.grad(lambda w: f(w).square().sum())(w), wr.grad)
    assert torch.allclose(torch.func.vmap(lambda xi: f(w, xi))(x[:, None])[:, 0], f(w))


def test_host_work_is_planned_once_per_layout():
    """A second call of the same layer reuses the stacked conv's plan (no IR walk per call), and
    the cached broadcast of weight shapes agrees with torch's, errors included."""
    from lambdaconv import geometry
    from lambdaconv.backends import stacked
    layer = lc.Conv2d(3, 4, 3, padding=1, op={"s": "x*W", "nx": "x*x", "nw": "W*W"},
                      post="s / (sqrt(nx * nw) + 1)")
    x = torch.randn(2, 3, 6, 6)
    layer(x)
    misses = stacked._plan.cache_info().misses
    y = layer(x)
    assert stacked._plan.cache_info().misses == misses
    assert torch.equal(y, layer(x))
    for shapes in [((4, 1, 3), (1, 2, 3)), ((1,), (5, 1)), ((), (2, 3)), (3, (2, 1))]:
        assert geometry.broadcast_shapes(*shapes) == torch.broadcast_shapes(*shapes)
    with pytest.raises(RuntimeError):
        geometry.broadcast_shapes((2, 3), (4, 3))
