"""explain(): how lambdaconv runs an op, and with a call's tensors, which backend, kernels and cost.

    lc.explain("adder")                                   # the plan: decompose or direct, and why
    lc.explain("adder", input=x, weights={"weight": w}, padding=1)   # + backend, kernels, cost
    layer.explain(x)                                      # the same for a layer and an input

The call is validated exactly as lc.conv1d/2d/3d validate it (the same errors), and the backend is
the one "auto" (or the named backend) would run; nothing is computed.
"""
from __future__ import annotations

import dataclasses
import math

from . import calls, cost, terms
from .explain_terms import explain_terms
from .backends import registry
from .ir import resolve_op, resolve_reduce, with_grad
from .plan import Plan, plan_for


def explain(op, reduce=None, *, input=None, weights=None, bias=None, stride=1, padding=0, dilation=1, groups=1,
            padding_mode="zeros", backend="auto", dims=None, grad=None, post=None) -> Plan:
    """How lambdaconv will run `op` with `reduce`: plan.strategy is "decompose" or "direct".

    With `input` and `weights` (and the conv's other arguments, as lc.conv1d/2d/3d take them) the
    plan also names the backend that runs the call, its kernels and their configs, and the
    forward's cost from the performance model (lambdaconv.cost: taps, operations per tap, bytes,
    the floor and what bounds it). `grad`: overridden partials, as conv2d takes them. With op a dict
    of terms, a two-level reduce or `post`: a terms.TermsPlan (each term, how it runs, the epilogue). `dims` (1, 2 or 3) is read from the weights' rank when not given."""
    if terms.is_terms(op, reduce, post):  # op={...}, reduce=(inner, outer), post=: each term and the epilogue
        return _explain_terms(op, reduce, post, input, weights, dims, grad,
                              dict(bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                   padding_mode=padding_mode, backend=backend))
    spec = with_grad(resolve_op(op), grad)
    plan = plan_for(spec, resolve_reduce(spec, reduce))
    if input is None and weights is None:
        return plan
    if input is None or weights is None:
        raise TypeError("explain: give both input and weights (or neither)")
    wdim = max((w.dim() for w in weights.values() if hasattr(w, "dim")), default=0) if isinstance(weights, dict) else 0
    d = dims if dims is not None else wdim - 2 if wdim >= 3 else input.dim() - 2
    if d not in (1, 2, 3):
        raise ValueError(f"explain: cannot tell 1-, 2- or 3-d from input {tuple(input.shape)} and the weights")
    x, b, ws, call, _ = calls.prepare(d, input, spec, weights, bias, stride, padding, dilation, groups, reduce,
                                           padding_mode, backend)
    be = registry.select(backend, call)
    kernels = tuple(be.describe(call)) if be.describe is not None else ()
    extra = {"backend": be.name, "kernels": kernels}
    if plan.strategy == "direct":
        c = cost.estimate(spec, call.geometry, x.element_size(), sum(math.prod(w.shape) for w in ws.values()))
        extra["cost"] = c.lines()
    return dataclasses.replace(plan, **extra)


def _explain_terms(op, reduce, post, input, weights, dims, grad, kw):
    if grad is not None:
        raise ValueError("grad= overrides apply to a single op with a single reduction, not to terms, two-level "
                         "reductions or post=")
    if (input is None) != (weights is None):
        raise TypeError("explain: give both input and weights (or neither)")
    d = dims
    if input is not None and d is None:
        d = input.dim() - 2
    return explain_terms(op, reduce, post, d=d, input=input, weights=weights, **kw)
