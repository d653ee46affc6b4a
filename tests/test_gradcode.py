"""gradcode.term: the backward kernels' per-tap term equals gs * partial, exactly, with ties and NaN.

Evaluated with the IR's torch evaluator (no triton needed), on values that hit every branch:
x == w ties, zeros, NaN in x, NaN / inf / 0 in the upstream gradient.
"""
import pytest
import torch

from lambdaconv.backends.triton import gradcode
from lambdaconv.backends.triton.codegen import depends
from lambdaconv.ir.evaluate import evaluate
from lambdaconv.ir.expr import topo_order
from lambdaconv.ir.spec import resolve_op

OPS = ["adder", "l2", "offset", "quadratic", "maximum(x, weight)", "minimum(x, weight)", "relu(x-A)*B",
       "sigmoid(A*x)*B", "where(x > weight, x, weight)", "abs(x*A - B)", "x / weight", "exp(x*weight)",
       "-3*sign(x-weight)", "clamp(x * weight, -0.5, 0.5)"]


def _values(names):
    g = torch.Generator().manual_seed(0)
    base = torch.tensor([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, float("nan")])
    x = base.repeat_interleave(len(base))  # every (x, w) pair, ties included
    ws = {n: base.repeat(len(base)) for n in names}
    gs = torch.cat([torch.tensor([1.5, -2.0, 0.0, float("nan"), float("inf")]), torch.randn(44, generator=g)])
    return x[:, None], {n: w[:, None] for n, w in ws.items()}, gs[None, :]


@pytest.mark.parametrize("op", OPS)
def test_term_is_gs_times_partial(op):
    spec = resolve_op(op)
    x, ws, gs = _values(spec.weight_names)
    for p in spec.partials():
        t, select = gradcode.term(p)
        want = gs * evaluate(p, x, ws, dtype=torch.float64)
        if select:  # printed as where(gs != 0, gs * partial, 0)
            got = torch.where(gs != 0, gs * evaluate(t, x, ws, dtype=torch.float64), 0.0)
            want = torch.where(gs != 0, want, 0.0)
        else:
            got = evaluate(t, x, {**ws, gradcode.GS_NAME: gs}, dtype=torch.float64)
        got, want = torch.broadcast_tensors(got, want)
        assert torch.equal(torch.isnan(got), torch.isnan(want)), (op, str(p), str(t))
        ok = ~torch.isnan(want)
        assert torch.equal(got[ok], want[ok]), (op, str(p), str(t))


def test_select_only_where_a_partial_can_be_inf():
    assert not gradcode.term(resolve_op("adder").partials()[0])[1]
    assert not gradcode.term(resolve_op("sigmoid(A*x)*B").partials()[0])[1]
    assert gradcode.term(resolve_op("x / weight").partials()[1])[1]
    assert gradcode.term(resolve_op("exp(x*weight)").partials()[0])[1]
    assert gradcode.term(resolve_op("adder").partials()[0], scaled_gs=True)[1]  # logsumexp keeps it


def test_sign_term_has_no_per_tap_multiply():
    # -gs * sign(x - w): selects between terms of gs alone, not a product per tap
    t, _ = gradcode.term(resolve_op("adder").partials()[0])
    assert t.op == "where" and "sign" not in str(t)
    per_tap = [n for n in topo_order(t) if n.op in ("mul", "add", "sub") and depends(n, "input")]
    assert [str(n) for n in per_tap] == ["x - weight"]


@pytest.mark.parametrize("op", OPS)
def test_branches_compare_a_and_b_exactly(op):
    # where(a - b > 0, A, where(a - b < 0, B, C)) accumulated as the Gluon kernels' predicated adds
    # (A if a > b, B if a < b, C otherwise) gives the term itself, ties, zeros, NaN and inf included
    spec = resolve_op(op)
    x, ws, gs = _values(spec.weight_names)
    env = {**ws, gradcode.GS_NAME: gs}
    found = 0
    for p in spec.partials():
        t, select = gradcode.term(p)
        br = gradcode.branches(t)
        if br is None:
            continue
        found += 1
        a, b, A, B, C = (evaluate(e, x, env, dtype=torch.float64) for e in br)
        a, b, A, B, C = torch.broadcast_tensors(a, b, A, B, C)
        got = torch.where(a > b, A, torch.where(a < b, B, C))
        want = torch.broadcast_to(evaluate(t, x, env, dtype=torch.float64), got.shape)
        assert torch.equal(torch.isnan(got), torch.isnan(want)), (op, str(t))
        assert torch.equal(got[~torch.isnan(want)], want[~torch.isnan(want)]), (op, str(t))
    assert found == {"adder": 2, "abs(x*A - B)": 1}.get(op, found)
    if op in ("offset", "quadratic", "sigmoid(A*x)*B"):
        assert found == 0
