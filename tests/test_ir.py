"""The op IR: tracing and parsing agree, printing round-trips, symbolic partials match autograd."""
import pytest
import torch

from lambdaconv.ir import evaluate, partials, resolve_op
from lambdaconv.ir.parse import parse_string

OPS = [
    ("A*(x-B)", lambda x, A, B: A * (x - B)),
    ("-abs(x-W)", lambda x, W: -abs(x - W)),
    ("sigmoid(A*x)*B", lambda x, A, B: torch.sigmoid(A * x) * B),
    ("A*x**2 + B*x", lambda x, A, B: A * x ** 2 + B * x),
    ("tanh(x*A+B)", lambda x, A, B: (x * A + B).tanh()),
    ("relu(x-A)*B", lambda x, A, B: torch.nn.functional.relu(x - A) * B),
    ("maximum(x, W) - minimum(x, 2*W)", lambda x, W: torch.maximum(x, W) - torch.minimum(x, 2 * W)),
    ("where(x > A, exp(x - A), 1 + x/A)", lambda x, A: torch.where(x > A, torch.exp(x - A), 1 + x / A)),
    ("clamp(x, min=A, max=B)", lambda x, A, B: torch.clamp(x, min=A, max=B)),
    ("softplus(x*A) + log1p(abs(x)) + atan(x)*erf(A)", lambda x, A: torch.nn.functional.softplus(x * A)
     + torch.log1p(x.abs()) + torch.atan(x) * torch.erf(A)),
    ("sqrt(x**2 + A**2) + sin(x)*cos(A) + expm1(x*A)", lambda x, A: (x.square() + A.pow(2)).sqrt()
     + x.sin() * A.cos() + torch.expm1(x * A)),
    ("pow(abs(x) + 1, A) + log(abs(x)+1)*A", lambda x, A: torch.pow(x.abs() + 1, A) + torch.log(x.abs() + 1) * A),
]


@pytest.mark.parametrize("text,fn", OPS, ids=[o[0] for o in OPS])
def test_string_and_callable_trace_to_the_same_ir(text, fn):
    s, c = resolve_op(text), resolve_op(fn)
    x = torch.randn(50, dtype=torch.float64)
    ws = {n: torch.randn(50, dtype=torch.float64) for n in s.weight_names}
    a = evaluate(s.expr, x, ws)
    b = evaluate(c.expr, x, ws)
    assert torch.allclose(a, b, atol=1e-12, equal_nan=True)
    assert torch.allclose(a, fn(x, **ws), atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("text,fn", OPS, ids=[o[0] for o in OPS])
def test_printing_round_trips(text, fn):
    e = resolve_op(text).expr
    assert parse_string(str(e))[0] is e  # interned: the same node


@pytest.mark.parametrize("text,fn", OPS, ids=[o[0] for o in OPS])
def test_partials_match_autograd(text, fn):
    s = resolve_op(text)
    x = torch.randn(200, dtype=torch.float64, requires_grad=True)
    ws = {n: torch.randn(200, dtype=torch.float64, requires_grad=True) for n in s.weight_names}
    y = fn(x, **ws)
    auto = torch.autograd.grad(y.sum(), [x] + list(ws.values()))
    sym = [evaluate(p, x.detach(), {k: v.detach() for k, v in ws.items()}) for p in s.partials()]
    for a, b in zip(auto, sym):
        assert torch.allclose(a, b.expand_as(a), atol=1e-10, equal_nan=True)


def test_ties_follow_torch():
    # torch.maximum splits a tie's gradient in half; abs and relu give 0 at 0
    s = resolve_op("maximum(x, W) + abs(x - W) + relu(x - W)")
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    y = torch.maximum(x, w) + (x - w).abs() + torch.relu(x - w)
    gx, gw = torch.autograd.grad(y.sum(), [x, w])
    px, pw = (evaluate(p, x.detach(), {"W": w.detach()}) for p in s.partials())
    assert torch.equal(px, gx) and torch.equal(pw, gw)


def test_presets():
    assert str(resolve_op("offset").expr) == "A*(x - B)"
    assert resolve_op("dilation").default_reduce == "max"
    assert resolve_op("erosion").default_reduce == "min"
    assert resolve_op("adder").weight_names == ("weight",)


def test_constant_folding_keeps_nan_semantics():
    e = resolve_op("0*x + W").expr
    x = torch.tensor([float("nan"), 1.0])
    assert torch.isnan(evaluate(e, x, {"W": torch.zeros(2)})[0])


def test_pow_gradients_follow_torch_at_zero():
    s = resolve_op("abs(x) ** W")
    x = torch.tensor([0.0, 0.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.0, 1.5, 0.0, -1.0], dtype=torch.float64, requires_grad=True)
    gx, gw = torch.autograd.grad((x.abs() ** w).sum(), [x, w])
    px, pw = (evaluate(p, x.detach(), {"W": w.detach()}) for p in s.partials())
    assert torch.equal(px, gx) and torch.equal(pw, gw)
