"""User-facing functions (the names an op may call) lowered to IR nodes.

Shared by the callable tracer and the string parser, so both accept exactly the same functions.
"""
from __future__ import annotations

from .expr import Expr, as_expr, node
from .ops import OPS, FUNCTIONS

_ALIASES = {"max": "maximum", "min": "minimum", "absolute": "abs", "arctan": "atan"}


def _clamp(x, min=None, max=None):
    # torch.clamp's gradient reaches x where min <= x <= max (inclusive): where() keeps that.
    out = as_expr(x)
    if min is not None:
        out = node("where", node("lt", out, min), min, out)
    if max is not None:  # compares the clamped-below value: min(max(x, lo), hi), as torch when lo > hi
        out = node("where", node("gt", out, max), max, out)
    return out


def call(name: str, args: tuple, kwargs: dict) -> Expr:
    """IR for calling function `name`; ValueError naming it if it is not supported."""
    name = _ALIASES.get(name, name)
    try:
        if name == "clamp" or name == "clip":
            return _clamp(*args, **kwargs)
        if name == "hardtanh":  # torch's defaults: clamp to [-1, 1], gradient 1 inside (inclusive)
            (a,) = args
            return _clamp(a, kwargs.get("min_val", -1.0), kwargs.get("max_val", 1.0))
        if name == "square":
            (a,) = args
            return node("mul", a, a)
        if name == "pow":
            a, b = args if len(args) == 2 else (args[0], kwargs["exponent"])
            return node("pow", a, b)
        if name == "relu" or name == "sigmoid" or name == "tanh":
            kwargs = {k: v for k, v in kwargs.items() if not (k == "inplace" and v is False)}
        if name in OPS and not kwargs:
            return node(name, *args)
    except TypeError as err:
        raise ValueError(f"bad arguments to {name}() in op: {err}") from None
    if name in OPS and kwargs:
        raise ValueError(f"{name}() in op does not take keyword arguments {sorted(kwargs)}")
    raise ValueError(
        f"unsupported function {name!r} in op; supported: {', '.join(FUNCTIONS)} and + - * / ** "
        "and comparisons"
    )
