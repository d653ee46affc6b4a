"""IR <-> sympy, and the separability analysis: op(x, w) = sum_i g_i(x) * h_i(w) + c(w).

Only the ops whose algebra the rewrite needs become real sympy objects: + - * /, neg, integer
powers, exp, sin, cos. Every other op (log, sqrt, tanh, sigmoid, abs, relu, where, comparisons,
non-integer powers, ...) becomes an opaque sympy Function `lc_<op>` of its converted arguments:
sympy never rewrites it (so no identity that is false in floating point, like sqrt(x**2) = x or
(x**0.5)**2 = x, can change a result), yet it still separates when its arguments are all on one
side (tanh(x) * A: g = tanh(x), h = A). A factor whose arguments mix x and weights
(abs(x - W), sigmoid(A*x)) is what makes an op "direct".

The rewrite expands products and integer powers, splits exp of sums into products of exps, and
sin/cos of sums by the addition formulas, then collects the terms by their x factor. Numbers
are kept exact (sympy Rationals, from the float's exact binary value) until they go back to IR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import sympy as sp

from .expr import Expr, const, inp, node, topo_order, weight
from .printing import to_string

_X = sp.Symbol("x")
_ARITH = {"add", "sub", "mul", "div", "neg"}
_NATIVE = {"exp": sp.exp, "sin": sp.sin, "cos": sp.cos}
_BACK = {sp.exp: "exp", sp.sin: "sin", sp.cos: "cos"}
# Above this integer power of a sum the expansion is not worth trying (it would be far over any
# term budget anyway) and sympy's multinomial expansion would be slow.
MAX_POWER = 12
# The analysis must never hang a job, whatever the op (a config file may hold it), so its work is
# bounded before sympy starts: ops larger than MAX_NODES IR nodes are not analysed; an integer
# power above MAX_EXPONENT stays an opaque call (9**9**9 would otherwise be computed exactly, a
# 370-million-digit integer); an expansion estimated above MAX_EXPANSION terms is not attempted
# (its result could never be within plan.MAX_TERMS anyway, short of massive cancellation).
MAX_NODES = 256
MAX_EXPONENT = 64
MAX_EXPANSION = 4096


@dataclass(frozen=True)
class Separation:
    """op = sum_i terms[i][0](x) * terms[i][1](w) + const(w), or the reason it cannot be written so."""
    terms: tuple = ()  # ((g_i: Expr of x only, h_i: Expr of weights / constants only), ...)
    const: Optional[Expr] = None  # the weights-only remainder (None: there is none)
    reason: Optional[str] = None  # why the op does not separate (then terms and const are empty)
    const_split: tuple = ()  # const = k * rest as (k: float, rest: Expr): k folds into a scalar argument

    @property
    def ok(self) -> bool:
        return self.reason is None


class _Ctx:
    """The two-way map between IR leaves / opaque calls and sympy objects for one op."""

    def __init__(self):
        self.weights = {}  # sympy Symbol -> weight name
        self.funcs = {}  # sympy Function class -> IR op name
        self.origin = {}  # sympy opaque call -> the IR node it came from (for messages)

    def wsym(self, name: str) -> sp.Symbol:
        s = sp.Symbol("w_" + name)  # prefixed: a weight can never collide with the input's symbol
        self.weights[s] = name
        return s

    def opaque(self, op: str):
        f = sp.Function("lc_" + op)
        self.funcs[f] = op
        return f


def to_sympy(e: Expr, ctx: _Ctx) -> sp.Expr:
    memo = {}
    for n in topo_order(e):
        a = [memo[c] for c in n.args]
        if n.op == "input":
            v = _X
        elif n.op == "weight":
            v = ctx.wsym(n.value)
        elif n.op == "const":
            if n.value != n.value or n.value in (float("inf"), float("-inf")):
                raise _NotSeparable("the op has a non-finite constant")
            v = sp.Rational(n.value)
        elif n.op == "add":
            v = a[0] + a[1]
        elif n.op == "sub":
            v = a[0] - a[1]
        elif n.op == "mul":
            v = a[0] * a[1]
        elif n.op == "div":
            v = a[0] / a[1]
        elif n.op == "neg":
            v = -a[0]
        elif n.op == "pow" and a[1].is_Integer and abs(int(a[1])) <= MAX_EXPONENT:
            v = sp.Pow(a[0], a[1])
        elif n.op in _NATIVE:
            v = _NATIVE[n.op](a[0])
        else:
            v = ctx.opaque(n.op)(*a)
            ctx.origin.setdefault(v, n)
        memo[n] = v
    return memo[e]


def from_sympy(s: sp.Expr, ctx: _Ctx) -> Expr:
    if s == _X:
        return inp("x")
    if s in ctx.weights:
        return weight(ctx.weights[s])
    if s.is_Number or s.is_NumberSymbol:
        if not s.is_finite:  # zoo from a division by a zero constant, nan
            raise _NotSeparable("the op has a non-finite constant")
        return const(float(s))
    if s.is_Add:
        pos, neg = [], []
        for t in _ordered(s.args):
            c, rest = t.as_coeff_Mul()
            (neg if c < 0 else pos).append(-t if c < 0 else t)
        out = None
        for t in pos:
            out = from_sympy(t, ctx) if out is None else node("add", out, from_sympy(t, ctx))
        for t in neg:
            out = node("neg", from_sympy(t, ctx)) if out is None else node("sub", out, from_sympy(t, ctx))
        return out
    if s.is_Mul:
        c, rest = s.as_coeff_Mul()
        if c < 0:
            return node("neg", from_sympy(-s, ctx))
        num = [f for f in _ordered(sp.Mul.make_args(s)) if not (f.is_Pow and f.exp.is_negative)]
        den = [1 / f for f in _ordered(sp.Mul.make_args(s)) if f.is_Pow and f.exp.is_negative]
        out = None
        for f in num:
            out = from_sympy(f, ctx) if out is None else node("mul", out, from_sympy(f, ctx))
        out = const(1.0) if out is None else out
        for f in den:
            out = node("div", out, from_sympy(f, ctx))
        return out
    if s.is_Pow:
        if s.exp.is_negative:
            return node("div", const(1.0), from_sympy(1 / s, ctx))
        return node("pow", from_sympy(s.base, ctx), from_sympy(s.exp, ctx))
    if s.func in _BACK:
        return node(_BACK[s.func], from_sympy(s.args[0], ctx))
    if s.func in ctx.funcs:
        return node(ctx.funcs[s.func], *(from_sympy(a, ctx) for a in s.args))
    raise _NotSeparable(f"cannot convert {s} back to the op IR")


def _ordered(args):
    """Numbers, then x-dependent factors / terms, then the rest in sympy's order (stable printing)."""
    return sorted(args, key=lambda t: (not t.is_Number, _X not in t.free_symbols, sp.default_sort_key(t)))


class _NotSeparable(Exception):
    pass


def _mixed(s: sp.Expr) -> bool:
    fs = s.free_symbols
    return _X in fs and len(fs) > 1


def _split_sum(arg: sp.Expr):
    """arg = (x-only part) + (weights/constant part) + (mixed part), each a sympy sum."""
    xs, ws, ms = [], [], []
    for t in sp.Add.make_args(_expand(arg)):
        fs = t.free_symbols
        (ms if (_X in fs and len(fs) > 1) else xs if _X in fs else ws).append(t)
    return sp.Add(*xs), sp.Add(*ws), sp.Add(*ms)


def _rewrite(f: sp.Expr) -> sp.Expr:
    """exp/sin/cos of a sum that mixes x and weights, split into products of one-sided factors."""
    xp, wp, mp = _split_sum(f.args[0])
    if mp != 0 or xp == 0 or wp == 0:
        return f  # a genuinely mixed argument (exp(x*A)) stays, and is reported
    if f.func is sp.exp:
        return sp.exp(xp) * sp.exp(wp)
    if f.func is sp.sin:  # sin(a + b) = sin a cos b + cos a sin b
        return sp.sin(xp) * sp.cos(wp) + sp.cos(xp) * sp.sin(wp)
    return sp.cos(xp) * sp.cos(wp) - sp.sin(xp) * sp.sin(wp)


def _size(s: sp.Expr) -> int:
    """An upper estimate of the number of terms sp.expand(s) gives (capped: only the budget matters)."""
    cap = MAX_EXPANSION + 1
    if s.is_Add:
        return min(cap, sum(_size(a) for a in s.args))
    if s.is_Mul:
        out = 1
        for a in s.args:
            out = min(cap, out * _size(a))
        return out
    if s.is_Pow and s.exp.is_Integer and s.exp > 1:
        m, n = _size(s.base), int(s.exp)
        return min(cap, math.comb(m + n - 1, n)) if m > 1 else 1  # monomials of degree n in m terms
    if s.func in _BACK:
        return 2  # the addition formulas split a mixed sum into two products
    return 1


@lru_cache(maxsize=4096)
def _expand(s: sp.Expr) -> sp.Expr:
    # cached: _rewrite expands each argument again, which without the cache is exponential in the
    # nesting depth (sin(sin(... sin(x*W)))) took minutes at 22 levels)
    n = _size(s)
    if n > MAX_EXPANSION:
        raise _NotSeparable(f"expanding the op would give more than {MAX_EXPANSION} terms (the planner's budget)")
    for p in s.atoms(sp.Pow):
        if p.exp.is_Integer and abs(int(p.exp)) > MAX_POWER and p.base.is_Add and _mixed(p.base):
            raise _NotSeparable(f"the power {p.exp} of a sum is too high to expand")
    s = s.replace(lambda f: f.func in _BACK and _mixed(f.args[0]), _rewrite)
    return sp.expand(s, deep=True, mul=True, multinomial=True, power_exp=False, power_base=False, log=False)


@lru_cache(maxsize=256)
def separate(e: Expr) -> Separation:
    """Split the op `e` into x-only times weights-only terms; Separation.reason says why not."""
    ctx = _Ctx()
    try:
        return _separate(e, ctx)
    except _NotSeparable as err:
        return Separation(reason=str(err))


def _separate(e: Expr, ctx: _Ctx) -> Separation:
    nodes = len(topo_order(e))
    if nodes > MAX_NODES:
        raise _NotSeparable(f"the op has {nodes} nodes, more than the planner analyses ({MAX_NODES})")
    s = _expand(to_sympy(e, ctx))
    if s.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        raise _NotSeparable("the op has a non-finite constant (a division by zero?)")
    groups = {}  # x factor -> sum of its weight factors
    consts = []
    for t in sp.Add.make_args(s):
        coeff, rest = t.as_coeff_Mul()
        xf, wf = [], []
        for f in sp.Mul.make_args(rest):
            if _mixed(f):
                raise _NotSeparable(_why(f, ctx))
            (xf if _X in f.free_symbols else wf).append(f)
        h = coeff * sp.Mul(*wf)
        if xf:
            g = sp.Mul(*xf)
            groups[g] = groups.get(g, 0) + h
        else:
            consts.append(h)
    terms = [(g, h) for g, h in groups.items() if h != 0]
    if not terms:
        raise _NotSeparable("the op does not depend on x once simplified")
    terms.sort(key=lambda gh: sp.default_sort_key(gh[0]))
    c = sp.Add(*consts)
    k, rest = c.as_coeff_Mul() if c.is_Mul else (sp.Integer(1), c)
    return Separation(tuple((from_sympy(g, ctx), from_sympy(h, ctx)) for g, h in terms),
                      None if c == 0 else from_sympy(c, ctx), None,
                      () if c == 0 else (float(k), from_sympy(rest, ctx)))


def _why(f: sp.Expr, ctx: _Ctx) -> str:
    # Print the factor as the user wrote it when it is one of their calls (expansion may have
    # rewritten its arguments: tanh(A*(x+B)) -> tanh(A*x + A*B)).
    shown = next((n for k, n in ctx.origin.items() if k == f or _expand(k) == f), None)
    text = to_string(shown) if shown is not None else to_string(from_sympy(f, ctx))
    names = [ctx.weights[w] for w in sorted(f.free_symbols - {_X}, key=str)]
    return f"{text} does not separate in x and {', '.join(names)}"


def value_at_zero(g: Expr) -> float:
    """g(0) for an x-only g, as torch computes it in float64 (may be inf or nan): where it is 0,
    zero padding of x and zero padding of g(x) are the same, and the native conv can pad."""
    import torch

    from .evaluate import evaluate

    return float(evaluate(g, torch.zeros((), dtype=torch.float64), {}))


__all__ = ["Separation", "separate", "to_sympy", "from_sympy", "value_at_zero"]
