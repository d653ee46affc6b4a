"""Strategy choice for an op: "decompose" (native convolutions) or "direct" (evaluate every tap).

`explain(op, reduce)` returns a Plan: plain data, built once per (op, reduce) under a cache,
printable. Backends read the plan; users read str(plan).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from .ir import OpSpec, resolve_op, resolve_reduce


@dataclass(frozen=True)
class Plan:
    op: str  # the op as parsed
    weights: tuple  # weight names
    reduce: str
    strategy: str  # "decompose" or "direct"
    reason: str  # why this strategy
    terms: tuple = field(default=())  # decompose: (g_i(x), h_i(w)) string pairs
    calls: tuple = field(default=())  # decompose: native calls, described

    def __str__(self) -> str:
        lines = [f"op:        {self.op}   (weights: {', '.join(self.weights) or 'none'})",
                 f"reduce:    {self.reduce}",
                 f"strategy:  {self.strategy}",
                 f"why:       {self.reason}"]
        if self.terms:
            lines.append("terms:     " + "  +  ".join(f"{gx} * [{hw}]" for gx, hw in self.terms))
        for c in self.calls:
            lines.append(f"call:      {c}")
        return "\n".join(lines)


@lru_cache(maxsize=256)
def _plan(spec: OpSpec, reduce: str) -> Plan:
    return Plan(str(spec.expr), spec.weight_names, reduce, "direct",
                "every tap is evaluated by a direct backend (tiled on CPU)")


def plan_for(spec: OpSpec, reduce: str) -> Plan:
    return _plan(spec, reduce)


def explain(op, reduce=None) -> Plan:
    """How lambdaconv will run `op` with `reduce`: plan.strategy is "decompose" or "direct"."""
    spec = resolve_op(op)
    return plan_for(spec, resolve_reduce(spec, reduce))
