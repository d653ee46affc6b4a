"""The formula IR: an interned expression DAG over one input value and named weights.

Every op the user writes (a Python callable, a string, a preset) becomes one `Expr`.
Nodes are hash-consed: building the same (op, args, value) twice returns the same object,
so structural equality is identity, common subexpressions are shared for free, and
derivatives built from the same pieces reuse them. Builders fold constants and drop
neutral elements (x + 0, x * 1) so that derivative expressions stay small.

Later stages consume this IR: `evaluate` (torch, any dtype/device), `grad.partials`
(symbolic derivatives), `sympy_bridge` (separability analysis) and per-target printers
(Triton source strings).
"""
from __future__ import annotations

import math
import weakref

# Leaves: "input" (value = the input's display name), "weight" (value = parameter name),
# "const" (value = float). Every other op name is a key of ops.OPS.
LEAVES = ("input", "weight", "const")


class Expr:
    """One interned node. Do not instantiate directly: use `node()` or the builders."""

    __slots__ = ("op", "args", "value", "__weakref__")
    _interned: "weakref.WeakValueDictionary[tuple, Expr]" = weakref.WeakValueDictionary()

    def __new__(cls, op: str, args: tuple = (), value=None):
        key = (op, args, value if op != "const" else float(value))
        found = cls._interned.get(key)
        if found is not None:
            return found
        self = object.__new__(cls)
        self.op, self.args, self.value = key
        cls._interned[key] = self
        return self

    # Interned: identity is equality, so the default object hash/eq are right.
    def __reduce__(self):
        return (Expr, (self.op, self.args, self.value))

    @property
    def is_const(self) -> bool:
        return self.op == "const"

    def __str__(self) -> str:
        from .printing import to_string

        return to_string(self)

    def __repr__(self) -> str:
        return f"Expr({self})"


def const(v: float) -> Expr:
    return Expr("const", (), float(v))


def inp(name: str = "x") -> Expr:
    return Expr("input", (), name)


def weight(name: str) -> Expr:
    return Expr("weight", (), name)


def as_expr(v) -> Expr:
    if isinstance(v, Expr):
        return v
    if isinstance(v, bool):
        return const(1.0 if v else 0.0)
    if isinstance(v, (int, float)):
        return const(v)
    raise TypeError(f"cannot use {type(v).__name__} {v!r} in an op expression")


def node(op: str, *args) -> Expr:
    """Build op(args) with constant folding and the algebraic identities that keep derivatives small."""
    from .ops import OPS

    args = tuple(as_expr(a) for a in args)
    spec = OPS[op]
    # Predicates are values only as where's condition; elsewhere they mean 0/1, as a bool
    # tensor does in torch arithmetic, and a where condition that is a value means "!= 0".
    args = tuple(
        (_as_pred(a) if (op == "where" and i == 0) else _as_number(a)) for i, a in enumerate(args)
    )
    if len(args) != spec.arity:
        raise ValueError(f"{op} takes {spec.arity} arguments, got {len(args)}")
    if all(a.is_const for a in args) and spec.fold is not None:
        try:
            return const(spec.fold(*(a.value for a in args)))
        except OverflowError:  # Python raises where float64 gives inf (9.0 ** 9 ** 9): fold as torch does
            import torch
            return const(float(spec.torch(*(torch.tensor(a.value, dtype=torch.float64) for a in args))))
        except (ValueError, ZeroDivisionError):
            pass  # e.g. log(-1): keep the node, evaluation gives torch's NaN/inf
    simplified = _simplify(op, args)
    return simplified if simplified is not None else Expr(op, args)


def _is_pred(e: Expr) -> bool:
    from .ops import OPS

    return e.op in OPS and OPS[e.op].boolean


def _as_pred(e: Expr) -> Expr:
    return e if _is_pred(e) else node("ne", e, 0.0)


def _as_number(e: Expr) -> Expr:
    return node("where", e, 1.0, 0.0) if _is_pred(e) else e


def _is(e: Expr, v: float) -> bool:
    return e.is_const and e.value == v


def _simplify(op: str, a: tuple):
    if op == "add":
        if _is(a[0], 0.0):
            return a[1]
        if _is(a[1], 0.0):
            return a[0]
        if a[1].op == "neg":
            return node("sub", a[0], a[1].args[0])
    elif op == "sub":
        if _is(a[1], 0.0):
            return a[0]
        if _is(a[0], 0.0):
            return node("neg", a[1])
    elif op == "mul":
        for i in (0, 1):
            if _is(a[i], 1.0):
                return a[1 - i]
            if _is(a[i], -1.0):
                return node("neg", a[1 - i])
            # No 0 * f -> 0: f may be inf or NaN, and torch would give NaN.
    elif op == "div":
        if _is(a[1], 1.0):
            return a[0]
    elif op == "where":
        if a[0].is_const:  # a folded condition picks its branch
            return a[1] if a[0].value else a[2]
    elif op == "neg":
        if a[0].op == "neg":
            return a[0].args[0]
    elif op == "pow":
        if _is(a[1], 1.0):
            return a[0]
        if _is(a[1], 0.0):
            return const(1.0)
    return None


def leaves(e: Expr, op: str) -> list:
    """Names of the leaves of kind `op` ("input" or "weight") in first-appearance order."""
    seen, out = set(), []
    for n in topo_order(e):
        if n.op == op and n.value not in seen:
            seen.add(n.value)
            out.append(n.value)
    return out


def topo_order(e: Expr) -> list:
    """Nodes of the DAG, each once, children before parents (iterative: deep ops are fine)."""
    order, done, stack = [], set(), [(e, False)]
    while stack:
        n, expanded = stack.pop()
        if id(n) in done:
            continue
        if expanded:
            done.add(id(n))
            order.append(n)
        else:
            stack.append((n, True))
            stack.extend((c, False) for c in reversed(n.args) if id(c) not in done)
    return order


def substitute(e: Expr, mapping: dict) -> Expr:
    """Replace nodes (keys are Expr) by other Exprs, rebuilding (and re-simplifying) parents."""
    memo = dict(mapping)
    for n in topo_order(e):
        if n in memo:
            continue
        memo[n] = n if not n.args else node(n.op, *(memo[c] for c in n.args))
    return memo[e]


def peel_scale(e: Expr) -> tuple:
    """(c, core) with e = c * core, c a finite nonzero constant peeled off the root (negations,
    constant factors and divisors). Reductions that commute with scaling (sum, mean; max/min with
    a sign swap) reduce the core and scale the small result: one pass less over every tap."""
    c = 1.0
    while True:
        if e.op == "neg":
            c, e = -c, e.args[0]
        elif e.op == "mul" and e.args[0].is_const and is_finite_number(e.args[0].value) and e.args[0].value:
            c, e = c * e.args[0].value, e.args[1]
        elif e.op == "mul" and e.args[1].is_const and is_finite_number(e.args[1].value) and e.args[1].value:
            c, e = c * e.args[1].value, e.args[0]
        elif e.op == "div" and e.args[1].is_const and is_finite_number(e.args[1].value) and e.args[1].value:
            c, e = c / e.args[1].value, e.args[0]
        else:
            return c, e


def is_finite_number(v: float) -> bool:
    return not (math.isnan(v) or math.isinf(v))
