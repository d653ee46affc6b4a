"""Hypothesis: random op expressions and conv shapes; the tiled path matches the reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from lambdaconv import reductions

from conftest import check_backend, make_inputs

UNARY = ["sin", "cos", "tanh", "sigmoid", "abs", "relu", "softplus", "atan", "-"]
BINARY = ["+", "-", "*", "maximum", "minimum"]
LEAVES = ["x", "A", "B", "0.5", "2"]


def exprs(depth):
    leaf = st.sampled_from(LEAVES)
    if depth == 0:
        return leaf
    sub = exprs(depth - 1)
    unary = st.tuples(st.sampled_from(UNARY), sub).map(lambda t: f"-({t[1]})" if t[0] == "-" else f"{t[0]}({t[1]})")
    binary = st.tuples(st.sampled_from(BINARY), sub, sub).map(
        lambda t: f"{t[0]}({t[1]}, {t[2]})" if t[0].isalpha() else f"({t[1]} {t[0]} {t[2]})")
    where = st.tuples(sub, sub, sub).map(lambda t: f"where({t[0]} > 0, {t[1]}, {t[2]})")
    return st.one_of(leaf, unary, binary, where)


@st.composite
def cases(draw):
    body = draw(exprs(3))
    op = f"({body}) + 0.5*x*A"  # every op uses x and A
    d = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    cin, cout = 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(d))
    size = tuple(draw(st.integers(3, 6)) for _ in range(d))
    kw = dict(stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, 1)), dilation=draw(st.integers(1, 2)),
              groups=groups, reduce=draw(st.sampled_from(reductions.names())),
              padding_mode=draw(st.sampled_from(["zeros", "ignore", "replicate", "circular"])))
    if any(s + 2 * kw["padding"] < kw["dilation"] * (kk - 1) + 1 for s, kk in zip(size, k)):
        kw["dilation"] = 1
    return op, d, cin, cout, k, size, kw


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_ops_match_reference(case):
    op, d, cin, cout, k, size, kw = case
    shape = (cout, cin // kw["groups"]) + k
    x, ws, b = make_inputs(d, 2, cin, size, {"A": shape, "B": shape})
    names = [n for n in ("A", "B") if n in op.replace("x*A", "x*A ")]
    ws = {n: ws[n] for n in names}
    check_backend("tiled", d, x, op, ws, b, **kw)
