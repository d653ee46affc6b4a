"""The backward kernels' per-tap term: the upstream gradient times a partial, rewritten for speed.

Every backward kernel accumulates, per tap, gs * d op/dv (gs: the upstream gradient of the output
the tap feeds, v: the input or a weight). Printed as written this costs a multiply, and a select
that drops taps which do not exist (their gs is 0, and 0 * inf/NaN would poison the sum):
with the adder's -sign(x - w) (2 compares, 2 selects, a multiply) about 10 instructions
per tap, where the forward needs 2. Two rewrites, both exact:

- gs is pushed into the branches of sign / where when each branch then depends on gs and
  constants alone: -gs * sign(u) = where(u > 0, -gs, where(u < 0, gs, gs * 0)), the terms of
  gs alone computed once per (row, out channel) and shared by the tile's columns (torch's sign
  is (u > 0) - (u < 0): 0 at 0 and at NaN; gs * 0 keeps a NaN/inf gs's NaN).
- The select is left out when the rewritten term is finite wherever x, the weights and gs are
  (every op flagged `finite` in ir/ops.py): a missing tap then adds gs * finite = 0. With a non-finite input or weight
  a missing tap can add NaN where the reference adds nothing; the forward is non-finite there
  already, so the gradient is NaN (loud) rather than silently wrong.
"""
from __future__ import annotations

from ...ir.expr import Expr, node, topo_order, weight
from ...ir.ops import OPS

GS_NAME = "__gs"
GS = weight(GS_NAME)  # printed as the kernels' `gs` variable

def _finite(e: Expr) -> bool:
    """True if e is finite wherever x, the weights and gs are (the op table's `finite` flags; pow
    with a small non-negative integer exponent is a product)."""
    for n in topo_order(e):
        if n.op == "const":
            if n.value != n.value or n.value in (float("inf"), float("-inf")):
                return False
        elif n.op == "pow":
            ex = n.args[1]
            if not (ex.is_const and ex.value.is_integer() and 0 <= ex.value <= 16):
                return False
        elif n.op not in ("input", "weight") and not OPS[n.op].finite:
            return False
    return True


def _of_gs(e: Expr) -> bool:
    """True if e depends on gs and constants only (computed once per row, not per tap)."""
    return all(n.op in ("const", "neg", "mul", "add") or n is GS for n in topo_order(e))


def _times(g: Expr, e: Expr) -> Expr:
    """g * e with g (a function of gs) pushed through negations and constant factors (so that
    -2 * gs is computed once per row, and g * (x - w) is one fused multiply-add per tap) and into
    sign / where branches that then depend on gs alone."""
    if e.is_const:
        return node("mul", g, e)
    if e.op == "neg":
        return _times(node("neg", g), e.args[0])
    if e.op == "mul" and (e.args[0].is_const or e.args[1].is_const):
        c, rest = (e.args[0], e.args[1]) if e.args[0].is_const else (e.args[1], e.args[0])
        return _times(node("mul", c, g), rest)
    if e.op == "sign":
        u = e.args[0]  # torch's sign is (u > 0) - (u < 0): 0 at u = 0 and at NaN
        return node("where", node("gt", u, 0.0), g, node("where", node("lt", u, 0.0), node("neg", g),
                                                              node("mul", g, 0.0)))
    if e.op == "where":
        a, b = _times(g, e.args[1]), _times(g, e.args[2])
        if _branch_ok(a) and _branch_ok(b):
            return node("where", e.args[0], a, b)
    return node("mul", g, e)


def _branch_ok(e: Expr) -> bool:
    return _of_gs(e) or e.op == "where"


def term(partial: Expr, scaled_gs: bool = False) -> tuple:
    """(expression to print, select) for gs * partial: with select False the printed expression is
    the whole term; with select True it is the partial, accumulated through value(..., True).
    scaled_gs: gs is rescaled per tap (logsumexp's softmax): no rewrite, the select stays."""
    if not scaled_gs:
        t = _times(GS, partial)
        if _finite(t):
            return t, False
    return partial, True


def branches(t: Expr):
    """(a, b, A, B, C) when the term t is where(a - b > 0, A, where(a - b < 0, B, C)) with A, B, C
    functions of gs alone (sign's rewrite above: the adder's and every |a - b|'s gradients), else
    None. Such a term is accumulated as acc + (A if a > b else B if a < b else C), comparing a and
    b themselves: a - b > 0 exactly when a > b (with subnormals, distinct floats never subtract to
    0; NaN and inf - inf fail both compares, as they fail both of u's). The Gluon backward kernels
    then use two compares (ALU pipe) and three predicated adds (FMA pipe) instead of two compares,
    two selects (ALU) and an add: on an H100 the ALU pipe, half the FMA pipe's rate, was 75-80%
    busy and the limit of both backward kernels (Nsight Compute)."""
    if t.op != "where" or t.args[0].op != "gt" or t.args[2].op != "where":
        return None
    (u, z1), A, (c2, B, C) = t.args[0].args, t.args[1], t.args[2].args
    if c2.op != "lt" or c2.args[0] is not u or u.op != "sub" or not (_is_zero(z1) and _is_zero(c2.args[1])):
        return None
    if not (_of_gs(A) and _of_gs(B) and _of_gs(C)):
        return None
    return u.args[0], u.args[1], A, B, C


def _is_zero(e: Expr) -> bool:
    return e.is_const and e.value == 0.0


# acc + (pa if a > b else pb if a < b else pc): exactly one of the three predicates holds, so the
# output is always written; the adds are IEEE round-to-nearest as triton's own
SGN_ACC_PTX = ("{ .reg .pred %lcgt, %lclt, %lceq; "
               "setp.gt.f32 %lcgt, $2, $3; setp.lt.f32 %lclt, $2, $3; setp.equ.f32 %lceq, $2, $3; "
               "@%lcgt add.f32 $0, $0, $4; @%lclt add.f32 $0, $0, $5; @%lceq add.f32 $0, $0, $6; }")


# the same without the third case, for C that is 0 wherever gs is finite (zero_if_finite): the
# kernels run it when the sum of gs is finite (no inf / NaN in gs), the form above otherwise
SGN_ACC2_PTX = ("{ .reg .pred %lcgt, %lclt; setp.gt.f32 %lcgt, $2, $3; setp.lt.f32 %lclt, $2, $3; "
                "@%lcgt add.f32 $0, $0, $4; @%lclt add.f32 $0, $0, $5; }")


def zero_if_finite(e: Expr) -> bool:
    """True if e (a function of gs) is +-0 wherever gs is finite: sign's rewrite's g * 0."""
    while e.op == "neg":
        e = e.args[0]
    return e.op == "mul" and any(_is_zero(a) for a in e.args)


def value(out: str, select: bool, lang: str = "tl") -> str:
    """The source of one tap's term, given the printed name of term()'s expression."""
    return f"{lang}.where(gs != 0.0, gs * ({out}), 0.0)" if select else out
