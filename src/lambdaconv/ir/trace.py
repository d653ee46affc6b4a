"""Trace a Python callable op into the IR with torch.fx.

The first parameter is the input value; the others are weights, looked up by name. Only
arithmetic, comparisons and the functions in builders.call are accepted; Python control flow
on the value, or any other function, is a ValueError that names it.
"""
from __future__ import annotations

import builtins
import inspect
import operator

import torch
import torch.fx as fx

from . import guards
from .builders import call
from .expr import Expr, as_expr, inp, node, weight

_OPERATORS = {
    operator.add: "add", operator.sub: "sub", operator.mul: "mul", operator.truediv: "div",
    operator.pow: "pow", operator.neg: "neg", operator.abs: "abs", operator.gt: "gt",
    operator.ge: "ge", operator.lt: "lt", operator.le: "le", operator.eq: "eq", operator.ne: "ne",
}
_TORCH_MODULES = ("torch", "torch.nn.functional", "torch._C._nn", "torch._C._VariableFunctions",
                  "torch.special", "torch._C._special")


def _describe(target) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod else name


def trace_callable(fn) -> tuple:
    """(expr, weight_names) for a callable op; weight names in signature order."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as err:
        raise TypeError(f"op must be a callable with named parameters: {err}") from None
    if not params:
        raise ValueError("op callable must take the input value as its first parameter")
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(f"op callable cannot use *args/**kwargs ({p.name}): weights are named parameters")
    names = [p.name for p in params]
    try:
        gm = fx.symbolic_trace(fn)
    except fx.proxy.TraceError as err:
        raise ValueError(_hint(fn) or f"op cannot be traced: {err} (Python `if`/`and`/`or` on the value; "
                         "use torch.where)") from None
    except Exception as err:  # noqa: BLE001 - anything the user's code raises under tracing
        raise ValueError(_hint(fn) or f"op cannot be traced: {type(err).__name__}: {err}") from None
    env = {}
    result = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            i = names.index(n.target) if n.target in names else len(env)
            env[n] = inp("x") if i == 0 else weight(names[i])
        elif n.op == "output":
            result = _lookup(n.args[0], env)
        elif n.op in ("call_function", "call_method"):
            args = tuple(_lookup(a, env) for a in n.args)
            kwargs = {k: _lookup(v, env) for k, v in n.kwargs.items()}
            env[n] = _apply(n.op, n.target, args, kwargs)
        else:
            raise ValueError(f"op cannot be traced: it reads {n.op} {n.target!r} (tensors captured from "
                             "outside the op are not supported; pass them as weights)")
    try:
        result = as_expr(result)
    except TypeError:
        raise ValueError(f"op must return a value computed from its inputs, got {result!r}") from None
    return result, tuple(names[1:])


def _hint(fn):
    """What to do instead, when the op reads something known not to trace (None otherwise)."""
    seen = guards.reads(fn)
    used = [n for n, f in (("max", builtins.max), ("min", builtins.min)) if any(v is f for v in seen)]
    if used:
        return (f"op cannot be traced: Python's builtin {'/'.join(f'{n}()' for n in used)} compares values with "
                f"`if`; use torch.maximum / torch.minimum (or torch.clamp) for an elementwise "
                f"{' / '.join(used)}")
    if any(getattr(v, "__name__", "") == "numpy" or (type(v).__module__ or "").startswith("numpy")
           or (getattr(v, "__module__", None) or "").startswith("numpy") for v in seen):
        return "op cannot be traced: it calls numpy, which cannot see lambdaconv's traced values; use torch " \
               "functions (torch.exp, torch.abs, ...)"
    return None


def _lookup(a, env):
    if isinstance(a, fx.Node):
        return env[a]
    if isinstance(a, (tuple, list)):
        return type(a)(_lookup(v, env) for v in a)
    if isinstance(a, torch.Tensor):
        if a.numel() != 1:
            raise ValueError("op uses a tensor constant; pass tensors as weights")
        return float(a)
    return a


def _apply(kind, target, args, kwargs) -> Expr:
    if kind == "call_method":
        return call(target, args, kwargs)
    if target in _OPERATORS:
        return node(_OPERATORS[target], *args)
    if target is operator.pos:
        return as_expr(args[0])
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", "")
    if not (mod in _TORCH_MODULES or mod.startswith("torch") or mod == "builtins" and name in ("abs", "max", "min")):
        raise ValueError(f"unsupported function {_describe(target)!r} in op")
    return call(name, args, kwargs)
