"""OpSpec: an op resolved once (callable, string or preset) into the IR, cached per op."""
from __future__ import annotations

import dataclasses
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
    # grad=: (name, Expr) pairs, "x" or a weight name, used as that per-tap partial in place of the
    # exact one (with_grad); empty: the exact derivatives
    grad: tuple = ()

    def partials(self, rules: tuple = ()) -> tuple:
        """(d op/dx, d op/dw for each weight), shared across calls; grad= overrides in place.
        rules: a target's forms of some ops' partials (ir.grad.partials)."""
        wrt = (("input", "x"),) + tuple(("weight", w) for w in self.weight_names)
        exact = partials(self.expr, wrt, rules)
        if not self.grad:
            return exact
        over = dict(self.grad)
        return tuple(over.get(n, p) for n, p in zip(("x",) + self.weight_names, exact))

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


def with_grad(spec: OpSpec, grad) -> OpSpec:
    """spec with the per-tap partial derivatives `grad` gives ({"x" or a weight name: an expression,
    a string or a callable of the op's variables}) in place of the exact ones; grad=None: spec."""
    if grad is None:
        return spec
    if not isinstance(grad, dict):
        raise TypeError(f"grad must be a dict mapping 'x' or a weight name to an expression, got {type(grad).__name__}")
    if all(isinstance(k, str) and isinstance(v, str) for k, v in grad.items()):  # strings: cached per call site
        return _with_grad_strings(spec, tuple(grad.items()))
    return _with_grad(spec, grad)


@lru_cache(maxsize=256)
def _with_grad_strings(spec: OpSpec, items: tuple) -> OpSpec:
    return _with_grad(spec, dict(items))


def _with_grad(spec: OpSpec, grad: dict) -> OpSpec:
    names = ("x",) + spec.weight_names
    over = []
    for name, g in grad.items():
        if name not in names:
            raise ValueError(f"grad names {name!r}, which is not a variable of the op {spec.expr} "
                             f"(its variables: {', '.join(names)})")
        if isinstance(g, str):
            expr, used = _grad_string(g)
        elif callable(g):
            s = resolve_op(g)
            expr, used = s.expr, s.weight_names
        else:
            raise TypeError(f"grad[{name!r}] must be an expression string or a callable, got {type(g).__name__}")
        extra = [u for u in used if u not in spec.weight_names]
        if extra:
            raise ValueError(f"grad[{name!r}] = {g!r} uses {', '.join(map(repr, extra))}, which the op "
                             f"{spec.expr} does not have (its weights: {', '.join(spec.weight_names) or 'none'})")
        over.append((name, expr))
    if not over:
        return spec
    shown = ", ".join(f"d/d{n} := {e}" for n, e in over)
    return dataclasses.replace(spec, grad=tuple(sorted(over, key=lambda p: names.index(p[0]))),
                               source=f"{spec.source} (grad: {shown})")


@lru_cache(maxsize=256)
def _grad_string(text: str) -> tuple:
    return parse_string(text, require_x=False)
