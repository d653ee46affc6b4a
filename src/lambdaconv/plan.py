"""Strategy choice for an op: "decompose" (native convolutions) or "direct" (evaluate every tap).

`plan_for(spec, reduce)` returns a Plan: plain data, built once per (op, reduce) under a cache,
printable. Backends read the plan; users read str(lambdaconv.explain(...)) (explain.py), which adds
the backend, kernels and cost of a call.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache

from . import reductions
from .ir import OpSpec, leaves
from .ir.sympy_bridge import separate

# Most stacked terms a decomposition may have. The conv then does MAX_TERMS times the
# multiply-adds of a plain conv, and each term costs a pass over the input. Measured
# (`python -m lambdaconv.bench decompose --terms`, benchmarks/results/results.md; CPU, 2 threads,
# N8 C32 O32 32x32 k3, forward):
# the direct (tiled) path's cost grows with the op's size too, so long polynomials sum_j A_j x**j
# stay 18-36x faster decomposed up to 48 terms; the worst case is a compact op with a long
# expansion, (x*A + 1)**p: decompose costs ~0.7 ms per term, tiled ~83 ms whatever p (45x faster
# decomposed at p = 3, 10x at p = 12), so the break-even is near 100 terms. 16 keeps a wide margin
# (and bounds the stacked input's memory to 16x the input's).
MAX_TERMS = 16


@dataclass(frozen=True)
class Plan:
    op: str  # the op as parsed
    weights: tuple  # weight names
    reduce: str
    strategy: str  # "decompose" or "direct"
    reason: str  # why this strategy
    terms: tuple = field(default=())  # decompose: (g_i(x), h_i(w)) string pairs
    calls: tuple = field(default=())  # decompose: native calls, described
    notes: tuple = field(default=())  # what the user may want to know (a term that duplicates the bias)
    # with a call's tensors (lambdaconv.explain(..., input=, weights=)): who runs it, and at what cost
    backend: str = ""  # the backend "auto" (or the named one) selects
    kernels: tuple = field(default=())  # the backend's description of what runs (kernels, configs)
    cost: tuple = field(default=())  # the performance model's lines (lambdaconv.cost)

    def __str__(self) -> str:
        lines = [f"op:        {self.op}   (weights: {', '.join(self.weights) or 'none'})",
                 f"reduce:    {self.reduce}",
                 f"strategy:  {self.strategy}",
                 f"why:       {self.reason}"]
        if self.terms:
            lines.append("terms:     " + "  +  ".join(f"{gx} * [{hw}]" for gx, hw in self.terms))
        for c in self.calls:
            lines.append(f"call:      {c}")
        for n in self.notes:
            lines.append(f"note:      {n}")
        if self.backend:
            lines.append(f"backend:   {self.backend}")
        lines += list(self.kernels) + list(self.cost)
        return "\n".join(lines)


@lru_cache(maxsize=256)
def _plan(spec: OpSpec, reduce: str) -> Plan:
    def direct(why):
        return Plan(str(spec.expr), spec.weight_names, reduce, "direct",
                    f"{why}; every tap is evaluated by a direct backend")

    if spec.grad:
        names = ("x",) + spec.weight_names
        exact = dict(zip(names, dataclasses.replace(spec, grad=()).partials()))
        p = direct("grad= overrides the derivative (a native convolution's backward would be the exact one)")
        notes = tuple(f"grad: d op / d {n} := {e}   (exact: {exact[n]})" for n, e in spec.grad)
        return Plan(p.op, p.weights, p.reduce, p.strategy, p.reason, notes=notes)
    rec = reductions.get(reduce)
    if not rec.linear:
        return direct(f"reduce {reduce} is not linear in the taps")
    sep = separate(spec.expr)
    if not sep.ok:
        return direct(sep.reason)
    n = len(sep.terms)
    if n > MAX_TERMS:
        return direct(f"separable into {n} terms, slower than direct (more than {MAX_TERMS})")
    terms = tuple((str(g), str(h)) for g, h in sep.terms)
    if sep.const is not None:
        terms += (("1", str(sep.const)),)
    gx = ", ".join(t[0] for t in terms[:n])
    hw = ", ".join(t[1] for t in terms[:n])
    chans = "in_channels" if n == 1 else f"{n} x in_channels"
    per = " / taps" if rec.backward == "count" else ""  # mean: weights and constant over the tap count
    bias = "bias" if sep.const is None else f"bias + sum over taps of {sep.const}{per}"
    calls = (f"convNd(input [{gx}]: {chans}{' stacked per group' if n > 1 else ''}, "
             f"weight [{hw}]{per}: (out_channels, {chans}/groups, *kernel), {bias})",)
    if sep.const is not None:
        calls += (f"padding_mode='ignore': sum over valid taps only, the validity mask convolved with {sep.const}",)
    why = f"op = sum of {n} term{'s' if n > 1 else ''} g(x) * h(weights)" + \
          (" + a weights-only term" if sep.const is not None else "") + ": one native convolution"
    notes = ()
    used_with_x = {w for _, h in sep.terms for w in leaves(h, "weight")}
    if sep.const is not None and not used_with_x & set(leaves(sep.const, "weight")):
        notes = (f"the weights-only term {sep.const} uses no weight that meets x: summed over the taps it is one "
                 f"constant per filter, which duplicates the bias (padding_mode='ignore' aside)",)
    return Plan(str(spec.expr), spec.weight_names, reduce, "decompose", why, terms, calls, notes)


def plan_for(spec: OpSpec, reduce: str) -> Plan:
    return _plan(spec, reduce)
