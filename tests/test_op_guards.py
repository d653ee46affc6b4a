"""Callable ops are cached by guarded trace (ir/guards.py): a changed captured value re-traces,
an unchanged one (an inline lambda, a new function object per call) reuses the trace, and a value
that cannot be watched is a ValueError naming it."""
import functools
import types

import pytest
import torch

import lambdaconv as lc
from lambdaconv.ir import resolve_op
from lambdaconv.ir import spec as spec_mod

from conftest import rel_err

GLOBAL_SCALE = 2.0


def _ref(x, op, ws, **kw):
    return lc.conv2d(x.double(), op, {k: v.double() for k, v in ws.items()}, backend="reference", **kw)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64), \
        {"W": torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("backend", ["auto", "tiled"])
@pytest.mark.parametrize("form", ["decompose", "direct"])
def test_closure_change_retraces(data, backend, form):
    x, ws = data
    scale = 2.0
    op = (lambda x, W: W * x * scale) if form == "decompose" else (lambda x, W: torch.tanh(W * x) * scale)
    y2 = lc.conv2d(x, op, ws, padding=1, backend=backend)
    scale = 3.0
    y3 = lc.conv2d(x, op, ws, padding=1, backend=backend)
    assert rel_err(y3, y2 * 1.5) < 1e-12
    scale = 2.0
    assert rel_err(lc.conv2d(x, op, ws, padding=1, backend=backend), y2) < 1e-12


def test_global_change_retraces(data):
    global GLOBAL_SCALE
    x, ws = data
    op = lambda x, W: W * x * GLOBAL_SCALE  # noqa: E731
    try:
        GLOBAL_SCALE = 2.0
        y2 = lc.conv2d(x, op, ws)
        GLOBAL_SCALE = 5.0
        y5 = lc.conv2d(x, op, ws)
    finally:
        GLOBAL_SCALE = 2.0
    assert rel_err(y5, y2 * 2.5) < 1e-12
    assert rel_err(y5, _ref(x, lambda x, W: W * x * 5.0, ws)) < 1e-12


def test_module_sees_the_change(data):
    x, _ = data
    scale = 2.0
    layer = lc.Conv2d(3, 4, 3, bias=False, op=lambda x, W: W * x * scale).double()
    y2 = layer(x)
    scale = 3.0
    y3 = layer(x)
    assert rel_err(y3, y2 * 1.5) < 1e-12


def test_helper_function_is_guarded(data):
    x, ws = data
    k = 1.0

    def helper(v):
        return torch.sigmoid(v * k)

    op = lambda x, W: helper(W * x)  # noqa: E731
    y1 = lc.conv2d(x, op, ws)
    k = 2.0
    y2 = lc.conv2d(x, op, ws)
    assert rel_err(y2, _ref(x, lambda x, W: torch.sigmoid(W * x * 2.0), ws)) < 1e-12
    assert rel_err(y1, y2) > 1e-3


def test_inline_lambda_reuses_the_trace(monkeypatch):
    calls = []
    real = spec_mod.trace_callable
    monkeypatch.setattr(spec_mod, "trace_callable", lambda fn: calls.append(fn) or real(fn))
    spec_mod._TRACES.clear()
    specs = {id(resolve_op(lambda x, A, B: A * (x - B))) for _ in range(5)}
    assert len(calls) == 1 and len(specs) == 1


def test_new_function_object_same_code(data):
    x, ws = data
    base = lambda x, W: W * x  # noqa: E731
    copy = types.FunctionType(base.__code__, base.__globals__)
    assert resolve_op(copy) is resolve_op(base)
    assert rel_err(lc.conv2d(x, copy, ws), lc.conv2d(x, base, ws)) == 0.0


def test_partial_is_guarded():

    def op(x, W, s):
        return W * x * s
    # a partial binding a number: the bound value is part of the key
    from lambdaconv.ir import guards
    a, b = guards.key(functools.partial(op, s=2.0)), guards.key(functools.partial(op, s=3.0))
    assert a != b and a == guards.key(functools.partial(op, s=2.0))


@pytest.mark.parametrize("what", ["tensor_closure", "tensor_global", "object"])
def test_unwatchable_value_is_a_value_error(data, what):
    x, ws = data
    t = torch.tensor(2.0)

    class Cfg:
        scale = 2.0
    cfg = Cfg()
    op = {"tensor_closure": lambda x, W: W * x * t, "object": lambda x, W: W * x * cfg.scale}.get(what)
    if what == "tensor_global":
        op = types.FunctionType((lambda x, W: W * x * T).__code__, {"T": t, "torch": torch})  # noqa: F821
    with pytest.raises(ValueError) as err:
        lc.conv2d(x, op, ws)
    msg = str(err.value)
    assert ("'t'" in msg or "'T'" in msg or "'cfg'" in msg) and "weight" in msg


def test_guard_cost_is_microseconds():
    # not a timing bar (benchmarks time it): the guard does no tracing on a hit
    op = lambda x, W: W * x * GLOBAL_SCALE  # noqa: E731
    s = resolve_op(op)
    assert all(resolve_op(op) is s for _ in range(100))
