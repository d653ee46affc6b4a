"""Evaluate an IR expression with torch ops (broadcasting), the semantics every backend matches."""
from __future__ import annotations

import torch

from .expr import Expr, topo_order
from .ops import OPS


def evaluate(e: Expr, x: torch.Tensor, weights: dict, *, dtype=None, device=None):
    """Value of `e` with the input leaf bound to `x` and weight leaves to `weights[name]`.

    Constants become 0-d tensors of `dtype` (default: x's) so that no op promotes the result to
    a wider type than the caller computes in. Returns a tensor (or a 0-d tensor for a constant).
    """
    dtype = dtype or x.dtype
    device = device or x.device
    memo = {}
    for n in topo_order(e):
        if n.op == "input":
            v = x
        elif n.op == "weight":
            v = weights[n.value]
        elif n.op == "const":
            v = torch.tensor(n.value, dtype=dtype, device=device)
        else:
            v = OPS[n.op].torch(*(memo[a] for a in n.args))
        memo[n] = v
    return memo[e]


def evaluate_many(exprs: list, x: torch.Tensor, weights: dict, *, dtype=None, device=None):
    """Evaluate several expressions sharing one memo (partials reuse the forward's nodes)."""
    dtype = dtype or x.dtype
    device = device or x.device
    memo = {}
    out = []
    for e in exprs:
        for n in topo_order(e):
            if n in memo:
                continue
            if n.op == "input":
                v = x
            elif n.op == "weight":
                v = weights[n.value]
            elif n.op == "const":
                v = torch.tensor(n.value, dtype=dtype, device=device)
            else:
                v = OPS[n.op].torch(*(memo[a] for a in n.args))
            memo[n] = v
        out.append(memo[e])
    return out
