"""The op table: every IR op with its torch reference, constant folder and symbolic partials.

One row per op (KeOps style: each op carries its own torch reference and its derivative).
Partials are IR expressions built from the op's arguments `a` and its own node `out`, chosen
to agree with torch's autograd, ties included (torch.maximum splits a tie's gradient in half,
abs and relu give 0 at 0), so that every backend matches the float64 reference exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .expr import node as N, const as C


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int
    torch: Callable  # tensors -> tensor, the reference semantics
    fold: Optional[Callable]  # floats -> float, for constant folding (None: never folded)
    partials: Optional[Callable]  # (args, out) -> tuple of Expr, one per arg; None: no gradient
    boolean: bool = False  # result is a predicate (comparisons): only usable as where's condition or 0/1
    takes_out: bool = True  # `torch` accepts out= (lets the tiled path reuse buffers across tiles)
    # finite wherever its arguments are (overflow of huge products aside): a gradient term built
    # only from such ops needs no select to drop taps that do not exist (backends/triton/gradcode.py)
    finite: bool = False


def _sign(v):
    return float((v > 0) - (v < 0))


def _where01(cond, a=1.0, b=0.0):
    return N("where", cond, a, b)


def _p_maximum(a, out):
    x, y = a
    half = _where01(N("eq", x, y), 0.5, 0.0)
    return (_where01(N("gt", x, y), 1.0, half), _where01(N("lt", x, y), 1.0, half))


def _p_minimum(a, out):
    x, y = a
    half = _where01(N("eq", x, y), 0.5, 0.0)
    return (_where01(N("lt", x, y), 1.0, half), _where01(N("gt", x, y), 1.0, half))


def _p_pow(a, out):
    # torch's conventions (pow_backward_self / _exponent): no base gradient where the exponent is 0,
    # no exponent gradient at base 0 with a non-negative exponent (0 * log 0 would be NaN)
    b, e = a
    d_base = N("mul", e, N("pow", b, N("sub", e, 1.0)))
    if e.is_const:
        return (d_base, None)
    d_base = N("where", N("eq", e, 0.0), 0.0, d_base)
    d_exp = N("mul", out, N("log", b))
    d_exp = N("where", N("eq", b, 0.0), N("where", N("ge", e, 0.0), 0.0, d_exp), d_exp)
    return (d_base, d_exp)


def _cmp(name, fn, tfn):
    return OpDef(name, 2, tfn, lambda x, y: float(fn(x, y)), None, boolean=True, finite=True)


def _safe(f):
    def g(*v):
        r = f(*v)
        if isinstance(r, complex):
            raise ValueError
        return r
    return g


def _softplus(v):
    return math.log1p(math.exp(-abs(v))) + max(v, 0.0)


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


_OPS = [
    OpDef("add", 2, torch.add, lambda x, y: x + y, lambda a, o: (C(1), C(1)), finite=True),
    OpDef("sub", 2, torch.sub, lambda x, y: x - y, lambda a, o: (C(1), C(-1)), finite=True),
    OpDef("mul", 2, torch.mul, lambda x, y: x * y, lambda a, o: (a[1], a[0]), finite=True),
    OpDef("div", 2, torch.div, lambda x, y: x / y,
          lambda a, o: (N("div", 1.0, a[1]), N("neg", N("div", o, a[1])))),
    OpDef("pow", 2, torch.pow, _safe(lambda x, y: x ** y), _p_pow),
    OpDef("neg", 1, torch.neg, lambda x: -x, lambda a, o: (C(-1),), finite=True),
    OpDef("abs", 1, torch.abs, abs, lambda a, o: (N("sign", a[0]),), finite=True),
    OpDef("sign", 1, torch.sign, _sign, lambda a, o: (C(0),), finite=True),
    OpDef("exp", 1, torch.exp, math.exp, lambda a, o: (o,)),
    OpDef("expm1", 1, torch.expm1, math.expm1, lambda a, o: (N("add", o, 1.0),)),
    OpDef("log", 1, torch.log, math.log, lambda a, o: (N("div", 1.0, a[0]),)),
    OpDef("log1p", 1, torch.log1p, math.log1p, lambda a, o: (N("div", 1.0, N("add", a[0], 1.0)),)),
    OpDef("sqrt", 1, torch.sqrt, math.sqrt, lambda a, o: (N("div", 0.5, o),)),
    OpDef("sin", 1, torch.sin, math.sin, lambda a, o: (N("cos", a[0]),), finite=True),
    OpDef("cos", 1, torch.cos, math.cos, lambda a, o: (N("neg", N("sin", a[0])),), finite=True),
    OpDef("tan", 1, torch.tan, math.tan, lambda a, o: (N("add", 1.0, N("mul", o, o)),)),
    OpDef("atan", 1, torch.atan, math.atan, lambda a, o: (N("div", 1.0, N("add", 1.0, N("mul", a[0], a[0]))),),
          finite=True),
    OpDef("tanh", 1, torch.tanh, math.tanh, lambda a, o: (N("sub", 1.0, N("mul", o, o)),), finite=True),
    OpDef("sigmoid", 1, torch.sigmoid, _sigmoid, lambda a, o: (N("mul", o, N("sub", 1.0, o)),),
          finite=True),
    OpDef("softplus", 1, torch.nn.functional.softplus, _softplus, lambda a, o: (N("sigmoid", a[0]),)),
    OpDef("relu", 1, torch.relu, lambda x: max(x, 0.0), lambda a, o: (_where01(N("gt", a[0], 0.0)),),
          takes_out=False, finite=True),
    OpDef("erf", 1, torch.erf, math.erf,
          lambda a, o: (N("mul", 2.0 / math.sqrt(math.pi), N("exp", N("neg", N("mul", a[0], a[0])))),),
          finite=True),
    OpDef("maximum", 2, torch.maximum, max, _p_maximum, finite=True),
    OpDef("minimum", 2, torch.minimum, min, _p_minimum, finite=True),
    OpDef("where", 3, torch.where, lambda c, x, y: x if c else y,
          lambda a, o: (None, _where01(a[0]), _where01(a[0], 0.0, 1.0)), finite=True),
    _cmp("gt", lambda x, y: x > y, torch.gt),
    _cmp("ge", lambda x, y: x >= y, torch.ge),
    _cmp("lt", lambda x, y: x < y, torch.lt),
    _cmp("le", lambda x, y: x <= y, torch.le),
    _cmp("eq", lambda x, y: x == y, torch.eq),
    _cmp("ne", lambda x, y: x != y, torch.ne),
]

OPS = {o.name: o for o in _OPS}

# Names a user may call in an op (string or callable), mapped to IR builders. clamp and
# square are sugar: they lower to ops above with torch's gradient conventions
# (clamp passes the gradient where min <= x <= max, as torch.clamp does).
FUNCTIONS = sorted(
    [n for n, o in OPS.items() if o.arity == 1 or n in ("maximum", "minimum", "where", "pow")]
    + ["clamp", "square", "max", "min", "hardtanh"]
)
