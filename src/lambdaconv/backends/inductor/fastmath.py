"""Cheaper vector forms of transcendental ops for the compiled CPU loops, as exact as float32 needs.

Inside Inductor's loops torch.tanh becomes Sleef's 1-ulp vector tanh, about three times the cost of
its exp, and a tanh op evaluates it once per tap in each of the three passes (forward, grad_x,
grad_w): nearly all of tanh(A*x+B)'s time (docs/perf_notes.md). Here tanh is built from one exp:

    |z| >= 0.8:  tanh(z) = sign(z) (1 - 2e / (1 + e)),  e = exp(-2|z|)   (no cancellation: e <= 0.2)
    |z| <  0.8:  tanh(z) = z (1 + z^2 P(z^2)),  P a degree-5 polynomial (1 - e would cancel here)

P's coefficients are a weighted least-squares fit of (tanh(z)/z - 1)/z^2 on z^2 in [0, 0.64]
(relative error of tanh weighted), computed in float64. Measured over 4.2e6 float32 points in
[-12, 12] and a logarithmic sweep of tiny arguments, the error against float64 tanh is at most 1.25
ulp (Sleef's: 1 ulp); tanh(+-0) = +-0, tanh(+-inf) = +-1, nan stays nan (tests/test_fastmath.py).
Only for float32 (and the half types, which compute in float32): float64 keeps torch.tanh, whose
accuracy this polynomial does not reach.

The backward passes need tanh's derivative, which the IR writes as 1 - tanh(z)^2: a tanh per tap
again, and in float32 a cancellation wherever tanh(z) is near +-1 (relative error 7e-4 at z = 5,
0 instead of 6e-8 at z = 9). PARTIALS gives the compiled graphs the same derivative as

    sech(z)^2 = 4e / (1 + e)^2,  e = exp(-2|z|)

one exp and four operations, with no cancellation anywhere (every dtype).
"""
from __future__ import annotations

import torch

from ...ir.expr import node, topo_order

_BREAK = 0.8
_P = (-0.3333329478952728, 0.13332169835151625, -0.05384888232128612, 0.021292638210418526,
      -0.00739528187203286, 0.0015773770435434662)


def tanh(z: torch.Tensor) -> torch.Tensor:
    a = z.abs()
    e = torch.exp(-2.0 * a)
    big = 1.0 - 2.0 * e / (1.0 + e)
    z2 = z * z
    p = _P[-1]
    for c in _P[-2::-1]:
        p = p * z2 + c
    # z * (1 + ...) keeps the sign of -0 (z + z * ... would round it to +0)
    return torch.where(a < _BREAK, z * (1.0 + z2 * p), torch.where(z < 0, -big, big))


FNS = {"tanh": tanh}


def _sech2(args, out):
    e = node("exp", node("mul", -2.0, node("abs", args[0])))
    one_e = node("add", 1.0, e)
    return (node("div", node("mul", 4.0, e), node("mul", one_e, one_e)),)


PARTIALS = (("tanh", _sech2),)  # ir.grad.partials rules: op name -> its partial in this form


def for_expr(e, dtype: torch.dtype) -> dict:
    """The IR ops to evaluate with these forms in graphs of `dtype` computing `e` (op name ->
    function). The form reads its argument four times, and compile.unshare copies a taps-sized
    argument per read: a tanh inside another tanh's argument would grow the graph four-fold per
    level, so such an op keeps torch.tanh."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return {}
    for n in topo_order(e):
        if n.op == "tanh" and any(m.op == "tanh" for m in topo_order(n.args[0])):
            return {}
    return FNS
