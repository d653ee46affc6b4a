"""Two-level reductions: reduce=(inner, outer), y[n, o, p] = OUTER over c in o's group of
INNER over the window's taps k of op(x[n, c, p*stride + k*dilation], w[o, c, k]).

Morphological layers reduce this way (max over each channel's window, then sum over channels).
The inner reduction is an ordinary single-level conv with one input channel per group: groups =
in_channels, and for each input channel c the out_channels/groups filters of c's group, whose
weights are w[o, c, :] (the "depthwise" form, any backend that runs the inner reduction runs it:
tiled, triton, decompose for a separable op with an inner sum / mean). Its output
(N, C * O/groups, *out) is the per-channel value; the outer reduction is the record's torch
reference over the group's channels, so its gradient is torch's (max / min: the first winner).
The reference backend computes the definition directly (reference.reference_conv with the pair).
Memory: the per-channel values are in_channels/groups times the output. On CUDA, (max / min,
sum / mean) runs fused in generated triton kernels instead (backends/triton/twolevel_kernel.py). When "tiled" is named,
and under "auto" on CPU, the fused tile-by-tile path runs instead (backends/twolevel_tiled.py:
both reductions per tile, memory bounded by the tile budget; 1.35x faster than the depthwise route
with Inductor for the gallery's 16 -> 32 max-sum layer, fwd+bwd on one CPU thread).
"""
from __future__ import annotations

import torch

from . import backends, functional, reductions
from .geometry import Geometry, broadcast_shapes, make_geometry
from .backends import twolevel_tiled
from .backends.composite import transform_active
from .reference import reference_conv


def depthwise_weight(w: torch.Tensor, full: tuple, groups: int) -> torch.Tensor:
    """(O, Cg, *k) weight -> (C * Og, 1, *k): row c * Og + j is w[group(c) * Og + j, c % Cg]."""
    o, cg = full[0], full[1]
    v = w.expand(full).unflatten(0, (groups, o // groups)).transpose(1, 2)  # (G, Cg, Og, *k)
    return v.reshape((groups * cg * (o // groups), 1) + tuple(full[2:]))


def check(spec, reduce: tuple, d, x, full, g: Geometry, padding, backend: str) -> None:
    """Raise (ValueError) if `backend` cannot run the inner reduction; no kernel runs."""
    if backend == "reference":
        return
    gi = make_geometry(d, tuple(x.shape), (g.in_channels * (full[0] // g.groups), 1) + tuple(full[2:]), g.stride,
                       padding, g.dilation, g.in_channels, g.padding_mode)
    backends.select(backend, backends.Call(spec, reduce[0], gi, x.device, x.dtype))


def fused(backend: str, x) -> bool:
    """Whether the fused tiled path runs (backends/twolevel_tiled.py): when tiled is named, and under
    "auto" on CPU, where it is faster than the depthwise route's per-channel outputs."""
    return backend == "tiled" or (backend == "auto" and x.device.type == "cpu")


def fused_triton(reduce: tuple, spec, x, backend: str) -> bool:
    """Whether the fused triton kernels run it (backends/triton/twolevel_kernel.py: (max / min,
    sum / mean) on CUDA under "auto" or "triton"): no per-channel values stored."""
    if x.device.type != "cuda" and backend != "triton":
        return False
    from .backends.triton import twolevel_kernel
    return twolevel_kernel.runs(reduce, spec, x, backend)


def run(d, x, spec, ws: dict, reduce: tuple, g: Geometry, padding, backend: str) -> torch.Tensor:
    """The term's two-level reduction as (N, groups, O_t / groups, *out) in x's dtype. ws broadcast
    to (O_t, Cg or 1, *k)."""
    full = broadcast_shapes(*(w.shape for w in ws.values()))
    full = (full[0], g.cin_per_group) + tuple(full[2:])
    og = full[0] // g.groups
    gt = Geometry(**{**g.__dict__, "out_channels": full[0]})
    if backend == "reference":
        y = reference_conv(x, spec, ws, None, gt, reduce).to(x.dtype)
        return y.unflatten(1, (g.groups, og))
    if fused(backend, x) and not transform_active():  # torch.func transforms: the depthwise route's aten ops
        return twolevel_tiled.run(x, spec, ws, reduce, gt).unflatten(1, (g.groups, og))
    if fused_triton(reduce, spec, x, backend):
        from .backends.triton import twolevel_kernel
        return twolevel_kernel.run(x, spec, ws, reduce, gt).unflatten(1, (g.groups, og))
    inner, outer = (reductions.get(r) for r in reduce)
    dw = {n: depthwise_weight(w, full, g.groups) for n, w in ws.items()}
    per_c = functional.convnd(d, x, spec, dw, None, g.stride, padding, g.dilation, g.in_channels, inner.name,
                              g.padding_mode, backend)  # (N, C * Og, *out)
    per_c = per_c.unflatten(1, (g.groups, g.cin_per_group, og))
    count = torch.full((), g.cin_per_group, device=x.device)  # a fill, not a host copy (CUDA graphs)
    return outer.reference(per_c, 2, count)  # (N, G, Og, *out)
