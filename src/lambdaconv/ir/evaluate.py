"""Evaluate an IR expression with torch ops (broadcasting), the semantics every backend matches."""
from __future__ import annotations

import torch

from .expr import Expr, topo_order
from .ops import OPS
from ..geometry import broadcast_shapes


def evaluate(e: Expr, x: torch.Tensor, weights: dict, *, dtype=None, device=None, arena=None):
    """Value of `e` with the input leaf bound to `x` and weight leaves to `weights[name]`.

    Constants become 0-d tensors of `dtype` (default: x's) so that no op promotes the result to
    a wider type than the caller computes in. With `arena` (a dict the caller keeps), every node
    writes into a buffer kept there under (node, shape), so that a loop over same-shaped tiles
    allocates once: fresh multi-MB tensors each step cost page faults that dominate cheap ops.
    Results then live in the arena and are overwritten by the next call with the same arena.
    """
    return evaluate_many([e], x, weights, dtype=dtype, device=device, arena=arena)[0]


def evaluate_many(exprs: list, x: torch.Tensor, weights: dict, *, dtype=None, device=None, arena=None,
                  scalars: bool = False, fns: dict | None = None):
    """Evaluate several expressions sharing one memo (partials reuse the forward's nodes).
    scalars: constants stay Python floats where an op also takes a tensor (graphs that a compiler
    traces: x ** 2.0 then lowers to x * x, where a 0-d tensor exponent is a general pow).
    fns: with scalars, op name -> a function used instead of the op's torch function (a compiled
    path's cheaper form of a transcendental op)."""
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
                v = float(n.value) if scalars else _const(n.value, arena, dtype, device)
            else:
                args = [memo[a] for a in n.args]
                v = _apply_scalars(n, args, dtype, device, fns) if scalars else _apply(n, args, arena, dtype, device)
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
    shape = broadcast_shapes(*(a.shape for a in args))
    buf = arena.get((n, shape))
    if buf is None:
        buf = arena[(n, shape)] = torch.empty(shape, dtype=torch.bool if spec.boolean else dtype, device=device)
    return spec.torch(*args, out=buf)


def _apply_scalars(n: Expr, args: list, dtype, device, fns=None):
    """_apply with Python-float constants, as 0-d tensors where the torch function takes none
    (torch.maximum, or an op of constants only)."""
    fn = (fns or {}).get(n.op, OPS[n.op].torch)
    if any(isinstance(a, torch.Tensor) for a in args):
        try:
            return fn(*args)
        except TypeError:
            pass
    return fn(*[a if isinstance(a, torch.Tensor) else _const(a, None, dtype, device) for a in args])
