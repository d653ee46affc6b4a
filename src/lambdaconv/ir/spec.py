"""OpSpec: an op resolved once (callable, string or preset) into the IR, cached per op."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from .. import reductions
from . import guards
from .expr import Expr
from .grad import partials
from .parse import parse_string
from .trace import trace_callable

REDUCES = reductions.names()  # the built-in ones; reductions.names() has any registered later

# name -> (op string, default reduce). Presets name their one weight `weight`, as nn.Conv2d does.
PRESETS = {
    "linear": ("weight*x", "sum"),
    "offset": ("A*(x-B)", "sum"),
    "quadratic": ("A*x**2 + B*x", "sum"),
    "adder": ("-abs(x-weight)", "sum"),
    "l2": ("-(x-weight)**2", "sum"),
    "dilation": ("x+weight", "max"),
    "erosion": ("x-weight", "min"),
}


@dataclass(frozen=True)
class OpSpec:
    expr: Expr  # the op as IR; the input leaf is named "x"
    weight_names: tuple  # op parameters after the input, in signature / appearance order
    default_reduce: str  # what reduce=None means for this op
    source: str  # how the user wrote it, for messages and explain()

    def partials(self) -> tuple:
        """(d op/dx, d op/dw for each weight), shared across calls."""
        wrt = (("input", "x"),) + tuple(("weight", w) for w in self.weight_names)
        return partials(self.expr, wrt)

    def __str__(self):
        return str(self.expr)


@lru_cache(maxsize=256)
def _from_string(text: str, default_reduce: str, source: str) -> OpSpec:
    expr, names = parse_string(text)
    return OpSpec(expr, names, default_reduce, source)


# Traces by guard key (ir/guards.py): the code object and every value it reads from outside.
_TRACES: dict = {}
_TRACES_MAX = 1024


def resolve_op(op) -> OpSpec:
    """The OpSpec for `op` (a preset name, an op string, a callable or an OpSpec)."""
    if isinstance(op, OpSpec):
        return op
    if isinstance(op, str):
        if op in PRESETS:
            text, red = PRESETS[op]
            return _from_string(text, red, f"{op!r} preset: {text}")
        if op.isidentifier() and op != "x":  # a bare name: a preset, misspelt
            close = difflib.get_close_matches(op, PRESETS, n=1)
            raise ValueError(f"unknown preset {op!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                             + f" (presets: {', '.join(PRESETS)}; an op string uses the input x, as in 'A*(x-B)')")
        return _from_string(op, "sum", op)
    if callable(op):
        k = guards.key(op)
        if k is not None:
            spec = _TRACES.get(k)
            if spec is not None:
                return spec
        expr, names = trace_callable(op)
        spec = OpSpec(expr, names, "sum", getattr(op, "__name__", "op") + f": {expr}")
        if k is not None:
            if len(_TRACES) >= _TRACES_MAX:
                _TRACES.clear()
            _TRACES[k] = spec
        return spec
    raise TypeError(f"op must be a callable, an op string or a preset name, got {type(op).__name__}")


def resolve_reduce(spec: OpSpec, reduce) -> str:
    if reduce is None:
        return spec.default_reduce
    if not isinstance(reduce, str):
        raise TypeError(f"reduce must be a string, got {type(reduce).__name__}")
    if reduce not in reductions.names():
        raise ValueError(f"unknown reduce {reduce!r}; expected one of {', '.join(reductions.names())}")
    return reduce
