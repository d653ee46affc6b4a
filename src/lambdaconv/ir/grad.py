"""Symbolic derivatives of an op, by reverse accumulation over the DAG (shared nodes once)."""
from __future__ import annotations

from functools import lru_cache

from .expr import Expr, const, node, topo_order
from .ops import OPS


@lru_cache(maxsize=512)
def partials(e: Expr, wrt: tuple, rules: tuple = ()) -> tuple:
    """d e / d leaf for each leaf in `wrt`, given as ("input", name) or ("weight", name).

    The result is one Expr per requested leaf (const 0 where it does not depend on it). These are
    tap-level derivatives; backends multiply them by the upstream gradient and the reduction's
    weight (1, 1/count, the argmax one-hot or the softmax) and reduce. `rules`: (op name, rule)
    pairs used instead of those ops' own partials (the same derivative in a form one target
    evaluates better), a rule as OpDef.partials.
    """
    rule_of = dict(rules)
    order = topo_order(e)
    adj = {e: const(1.0)}
    for n in reversed(order):
        g = adj.get(n)
        if g is None or not n.args:
            continue
        spec = OPS[n.op]
        if spec.partials is None:
            continue
        for child, p in zip(n.args, rule_of.get(n.op, spec.partials)(n.args, n)):
            if p is None or (p.is_const and p.value == 0.0):
                continue
            contrib = node("mul", g, p)
            adj[child] = contrib if child not in adj else node("add", adj[child], contrib)
    out = []
    for kind, name in wrt:
        found = [v for k, v in adj.items() if k.op == kind and k.value == name]
        out.append(found[0] if found else const(0.0))
    return tuple(out)
