"""Evaluate an IR expression with torch ops (broadcasting), the semantics every backend matches."""
from __future__ import annotations

import torch

from .expr import Expr, topo_order
from .ops import OPS


def evaluate(e: Expr, x: torch.Tensor, weights: dict, *, dtype=None, device=None, arena=None):
    """Value of `e` with the input leaf bound to `x` and weight leaves to `weights[name]`.

    Constants become 0-d tensors of `dtype` (default: x's) so that no op promotes the result to
    a wider type than the caller computes in. With `arena` (a dict the caller keeps), every node
    writes into a buffer kept there under (node, shape), so that a loop over same-shaped tiles
    allocates once: fresh multi-MB tensors each step cost page faults that dominate cheap ops.
    Results then live in the arena and are overwritten by the next call with the same arena.
    """
    return evaluate_many([e], x, weights, dtype=dtype, device=device, arena=arena)[0]


def evaluate_many(exprs: list, x: torch.Tensor, weights: dict, *, dtype=None, device=None, arena=None):
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
                v = _const(n.value, arena, dtype, device)
            else:
                v = _apply(n, [memo[a] for a in n.args], arena, dtype, device)
            memo[n] = v
        out.append(memo[e])
    return out


def _const(value: float, arena, dtype, device) -> torch.Tensor:
    # torch.full is a fill kernel, so it is legal inside CUDA-graph capture (torch.tensor would be
    # a host-to-device copy); with an arena, once per call rather than once per tile
    key = ("const", value, dtype)
    if arena is not None and key in arena:
        return arena[key]
    v = torch.full((), value, dtype=dtype, device=device)
    if arena is not None:
        arena[key] = v
    return v


def _apply(n: Expr, args: list, arena, dtype, device):
    spec = OPS[n.op]
    if arena is None or not spec.takes_out:
        return spec.torch(*args)
    shape = torch.broadcast_shapes(*(a.shape for a in args))
    buf = arena.get((n, shape))
    if buf is None:
        buf = arena[(n, shape)] = torch.empty(shape, dtype=torch.bool if spec.boolean else dtype, device=device)
    return spec.torch(*args, out=buf)
