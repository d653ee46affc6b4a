"""Infix printing of the IR, with the fewest parentheses that keep the meaning."""
from __future__ import annotations

from .expr import Expr, topo_order

_INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2), "pow": ("**", 4),
          "gt": (">", 0), "ge": (">=", 0), "lt": ("<", 0), "le": ("<=", 0), "eq": ("==", 0), "ne": ("!=", 0)}
_ATOM = 5


def _num(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def to_string(e: Expr) -> str:
    memo = {}
    for n in topo_order(e):
        memo[n] = _fmt(n, memo)
    return memo[e][0]


def _fmt(n: Expr, memo) -> tuple:
    """(text, precedence) of one node given its children's."""
    if n.op in ("input", "weight"):
        return n.value, _ATOM
    if n.op == "const":
        return _num(n.value), (_ATOM if n.value >= 0 else 3)
    if n.op == "neg":
        t, p = memo[n.args[0]]
        return "-" + (t if p > 3 else f"({t})"), 3
    if n.op in _INFIX:
        sym, prec = _INFIX[n.op]
        (lt, lp), (rt, rp) = memo[n.args[0]], memo[n.args[1]]
        if n.op == "pow":  # right-associative, binds tighter than unary minus on its left
            lt = lt if lp > prec else f"({lt})"
            rt = rt if rp >= 3 else f"({rt})"
        else:
            lt = lt if lp >= prec else f"({lt})"
            # a - (b - c), a / (b * c): the right side needs parentheses at equal precedence
            rt = rt if rp > prec or (rp == prec and n.op in ("add", "mul")) else f"({rt})"
        sep = "" if n.op in ("mul", "div", "pow") else " "
        return f"{lt}{sep}{sym}{sep}{rt}", prec
    return f"{n.op}({', '.join(memo[a][0] for a in n.args)})", _ATOM
