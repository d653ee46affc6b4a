"""Transposed lambda convolutions against a float64 definition written with loops (the issue's
formula), forward and gradients, every reduction record; the linear op against F.conv_transposeNd."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import lambdaconv as lc
from lambdaconv import reductions
from lambdaconv.ir import evaluate, resolve_op

TCONV = {1: lc.conv_transpose1d, 2: lc.conv_transpose2d, 3: lc.conv_transpose3d}
NATIVE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def definition(x, op, ws, bias, stride, padding, output_padding, groups, dilation, reduce):
    """y[n, o, q] = REDUCE over (c in o's group, k, p) with q = p*s - pad + k*dil of op(x[n,c,p], w[c,o_g,k])."""
    spec, rec = resolve_op(op), reductions.get(reduce)
    d = x.dim() - 2
    full = torch.broadcast_shapes(*[w.shape for w in ws.values()])
    c, og, kernel = full[0], full[1], full[2:]
    w = {n: t.expand(full) for n, t in ws.items()}
    out = [(i - 1) * s - 2 * p + dl * (k - 1) + op_ + 1
           for i, s, p, dl, k, op_ in zip(x.shape[2:], stride, padding, dilation, kernel, output_padding)]
    cg = c // groups
    taps = {}
    for ps in itertools.product(*[range(i) for i in x.shape[2:]]):
        for ks in itertools.product(*[range(k) for k in kernel]):
            q = tuple(p * s - pd + k * dl for p, s, pd, k, dl in zip(ps, stride, padding, ks, dilation))
            if all(0 <= qi < oi for qi, oi in zip(q, out)):
                taps.setdefault(q, []).append((ps, ks))
    n, o = x.shape[0], og * groups
    ys = torch.empty((n, o) + tuple(out), dtype=torch.float64)
    rows = []
    for b in range(n):
        for oo in range(o):
            gi, ol = divmod(oo, og)
            vals_q = []
            for q in itertools.product(*[range(v) for v in out]):
                vals = [evaluate(spec.expr, x[b, ci][ps], {nm: t[ci, ol][ks] for nm, t in w.items()})
                        for ps, ks in taps.get(q, []) for ci in range(gi * cg, (gi + 1) * cg)]
                if vals:
                    v = torch.stack([torch.as_tensor(t, dtype=torch.float64) for t in vals])
                    r = rec.reference(v, 0, torch.tensor(len(vals)))
                else:
                    r = torch.tensor(rec.identity if reduce != "mean" else float("nan"), dtype=torch.float64)
                vals_q.append(r + (bias[oo] if bias is not None else 0.0))
            rows.append(torch.stack(vals_q).reshape(out))
    return torch.stack(rows).reshape(ys.shape)


CASES = [  # (d, x shape, weight shape (C, O/g, *k), stride, padding, output_padding, groups, dilation)
    (1, (2, 2, 4), (2, 3, 3), (2,), (1,), (1,), 1, (1,)),
    (1, (1, 4, 3), (4, 1, 2), (3,), (0,), (2,), 2, (1,)),  # positions no tap reaches: the identity
    (2, (1, 2, 3, 2), (2, 2, 2, 3), (2, 1), (1, 0), (1, 0), 1, (1, 2)),
    (3, (1, 1, 2, 2, 2), (1, 2, 2, 1, 2), (2, 2, 1), (0, 1, 0), (0, 1, 0), 1, (1, 1, 1)),
]


def by_phases(d, x, op, ws, b, s, p, op_, g, dl, reduce, split=False):
    """The phase route (transpose_phases: one stride-1 call per output phase, what the triton
    kernels run) on the float64 tiled backend; split: with the borders apart (what runs where the
    Gluon forward applies)."""
    from lambdaconv import transpose, transpose_phases
    from lambdaconv.backends import registry
    v = transpose._validate(d, x, op, ws, b, s, p, op_, g, dl, reduce, "auto", None)
    out = transpose._equivalent_call(v)[0].geometry.out_size
    phases = transpose_phases.phases(d, tuple(x.shape), v.full, g, s, p, dl, out)
    if split:
        phases = transpose_phases.split_borders(phases)
    return transpose_phases.run(v, phases, out, lambda c: registry.get("tiled"))


ROUTES = {"auto": lambda d, *a, reduce: TCONV[d](*a, reduce=reduce),
          "phases": lambda d, *a, reduce: by_phases(d, *a, reduce),
          "phases-split": lambda d, *a, reduce: by_phases(d, *a, reduce, split=True)}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("reduce", reductions.names())
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-s{c[3]}-p{c[4]}-g{c[6]}")
@pytest.mark.parametrize("op", ["adder", "sigmoid(A*x)*B", "linear", "offset", "l2", "quadratic"])
def test_matches_the_definition(op, case, reduce, route):
    d, xs, wsh, s, p, op_, g, dl = case
    gen = torch.Generator().manual_seed(0)
    names = resolve_op(op).weight_names
    x = torch.randn(xs, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = {n: (torch.randn(wsh, generator=gen, dtype=torch.float64) * 0.5).requires_grad_() for n in names}
    b = torch.randn(wsh[1] * g, generator=gen, dtype=torch.float64, requires_grad=True)
    y = ROUTES[route](d, x, op, ws, b, s, p, op_, g, dl, reduce=reduce)
    r = definition(x, op, ws, b, s, p, op_, g, dl, reduce)
    assert y.shape == r.shape
    assert torch.equal(torch.isnan(y), torch.isnan(r)) and torch.equal(torch.isinf(y), torch.isinf(r))
    fin = torch.isfinite(r)
    assert torch.allclose(y[fin], r[fin], atol=1e-10, rtol=1e-10)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    inputs = [x, b, *ws.values()]
    got = torch.autograd.grad(y, inputs, gy.masked_fill(~fin, 0), allow_unused=True)
    want = torch.autograd.grad(r, inputs, gy.masked_fill(~fin, 0), allow_unused=True)
    for a, e in zip(got, want):
        a = torch.zeros_like(inputs[0]) if a is None and e is None else a
        if e is None:
            continue
        assert torch.allclose(a, e, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_linear_op_is_the_native_transposed_conv(d):
    gen = torch.Generator().manual_seed(d)
    x = torch.randn((2, 4) + (5,) * d, generator=gen, dtype=torch.float64)
    w = torch.randn((4, 3) + (3,) * d, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    for kw in (dict(stride=2, padding=1, output_padding=1), dict(stride=3, padding=2, dilation=2, groups=2),
               dict(stride=1, padding=0)):
        wg = w if kw.get("groups", 1) == 1 else w  # (C, O/g, *k): 3 outputs per group
        y = TCONV[d](x, "linear", {"weight": wg}, b[:3 * kw.get("groups", 1)], **kw)
        r = NATIVE[d](x, wg, b[:3 * kw.get("groups", 1)], **kw)
        assert torch.allclose(y, r, atol=1e-12, rtol=1e-12)


def test_module_and_errors():
    m = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    layer = lc.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, op="linear")
    assert layer.weight.shape == m.weight.shape
    with torch.no_grad():
        layer.weight.copy_(m.weight)
        layer.bias.copy_(m.bias)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(layer(x), m(x), atol=1e-5)
    assert lc.ConvTranspose2d(4, 6, 3, op="adder")(x[0]).shape == (6, 7, 7)  # unbatched
    with pytest.raises(ValueError, match="output_padding"):
        lc.conv_transpose2d(x, "adder", {"weight": torch.randn(4, 2, 3, 3)}, stride=1, output_padding=1)
    with pytest.raises(ValueError, match="padding_mode"):
        lc.ConvTranspose2d(4, 6, 3, op="adder", padding_mode="reflect")
    with pytest.raises(ValueError, match="channels mismatch"):
        lc.conv_transpose2d(x, "adder", {"weight": torch.randn(3, 2, 3, 3)})


@pytest.mark.parametrize("op", ["offset", "l2", "quadratic"])
@pytest.mark.parametrize("reduce", [r.name for r in reductions.all_records() if r.linear])
def test_native_route_matches_tiled(op, reduce):
    gen = torch.Generator().manual_seed(1)
    names = resolve_op(op).weight_names
    x = torch.randn(2, 4, 5, 4, generator=gen, dtype=torch.float64)
    ws = {n: torch.randn(4, 3, 3, 2, generator=gen, dtype=torch.float64) for n in names}
    kw = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2), reduce=reduce)
    assert lc.explain(op, reduce).strategy == "decompose"
    a = lc.conv_transpose2d(x, op, ws, **kw)  # auto: one native transposed conv
    b = lc.conv_transpose2d(x, op, ws, backend="tiled", **kw)
    assert torch.allclose(a, b, atol=1e-10, rtol=1e-10, equal_nan=True)


@pytest.mark.parametrize("op", ["x*W", "offset", "adder", "dilation"])
def test_layer_explain_names_what_runs(op):
    """layer.explain(x): the strategy, the backend that runs the call, and (direct) the cost over the
    real taps only (the inserted zeros are no taps): N * O * C * (pairs of input position and kernel
    offset landing in the output) = the sum of a transposed conv of ones with ones."""
    torch.manual_seed(0)
    m = lc.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1, op=op)
    x = torch.randn(2, 4, 5, 6)
    plan = m.explain(x)
    assert plan.strategy == lc.explain(op).strategy
    if plan.strategy == "decompose":
        assert plan.backend == "decompose" and "conv_transpose2d" in plan.calls[0]
    else:
        from lambdaconv.backends import registry
        assert plan.backend in registry.names()
        reach = F.conv_transpose2d(torch.ones(2, 4, 5, 6), torch.ones(4, 3, 3, 3), stride=2, padding=1,
                                   output_padding=1).sum()
        assert plan.cost[0].startswith(f"cost:      {float(reach):.3g} taps")
        assert "transposed" in str(plan)
    assert m.explain().op == plan.op
    with pytest.raises(ValueError, match="channels"):
        m.explain(torch.randn(2, 5, 5, 6))


def test_split_borders_keeps_the_taps_in_zero_padded_interiors():
    """k3 s2 p1 op1 in 2-d: 4 phases, 3 under "ignore"; split, 9 pieces whose outputs tile y once,
    the interiors without padding (the Gluon forward's), nearly every tap in them."""
    import math

    from lambdaconv import transpose_phases
    x_shape, full, out = (2, 4, 10, 12), (4, 3, 3, 3), (20, 24)
    phases = transpose_phases.phases(2, x_shape, full, 1, (2, 2), (1, 1), (1, 1), out)
    assert sum(ph.geometry.padding_mode == "ignore" for ph in phases) == 3
    pieces = transpose_phases.split_borders(phases)
    assert len(pieces) == 9
    cover = torch.zeros(out, dtype=torch.int64)
    for ph in pieces:
        cover[ph.out] += 1
        gm = ph.geometry
        assert gm.out_size == tuple(len(range(*sl.indices(n))) for sl, n in zip(ph.out, out))
        assert tuple(sl.stop - sl.start for sl in ph.crop) == gm.in_size
    assert bool((cover == 1).all())
    taps = {m: sum(math.prod(p.geometry.out_size) * math.prod(p.geometry.kernel) for p in pieces
                   if (p.geometry.padding_mode == "zeros") == m) for m in (True, False)}
    assert all(p.geometry.pad == ((0, 0), (0, 0)) for p in pieces if p.geometry.padding_mode == "zeros")
    assert taps[True] > 0.8 * (taps[True] + taps[False])
