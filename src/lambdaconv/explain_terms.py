"""explain() for terms, two-level reductions and post= (lambdaconv.terms): each term, how it runs,
and the epilogue; with a call's tensors also the backend of each direct term and the stacked conv's
channels. The call is validated as the conv validates it; nothing is computed."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import backends, calls, twolevel
from .backends import stacked
from .geometry import broadcast_shapes, make_geometry
from .plan import plan_for
from .terms import Term, _Prepared, parse, prepare

@dataclass(frozen=True)
class TermsPlan:
    """What explain() returns for terms: each term, how it runs, and the epilogue (printable)."""
    terms: tuple  # (name, op, reduce, how) per term
    post: str  # the epilogue, as written
    lines: tuple  # everything, as printed

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _how_text(t: Term, how: str, backend: str) -> str:
    if how == "constant":
        return "constant: no x, a per-filter value computed once per call from the weights"
    shared = "; no weights: one value per group, computed once and broadcast over the filters" if t.shared else ""
    if how == "stacked":
        return "stacked: a block of the one native convolution of the separable terms" + shared
    if how == "two-level":
        inner, outer = t.reduce
        route = {"fused": "fused tile by tile (twolevel_tiled)",
                 "fused-triton": "fused in triton kernels, no per-channel values stored (twolevel_kernel)",
                 "either": "on CPU fused tile by tile; elsewhere a conv with groups = in_channels"}.get(
            backend, f"a conv with groups = in_channels, {backend}")
        return f"two-level: {inner} over each input channel's taps ({route}), then {outer} over the group's channels" \
            + shared
    return f"direct ({backend}): {plan_for(t.spec, t.reduce).reason}" + shared


def explain_terms(op, reduce=None, post=None, *, d=None, input=None, weights=None, bias=None, stride=1, padding=0,
                  dilation=1, groups=1, padding_mode="zeros", backend="auto") -> TermsPlan:
    ts = parse(op, reduce, post)
    p = None
    if input is not None:
        p = prepare(d, input, ts, weights, bias, stride, padding, dilation, groups, padding_mode, backend)
        hows = [(how, t, w) for how, t, w in p.work]
    else:  # no tensors: what the plan alone says ("auto", no geometry)
        hows = [("constant" if not t.uses_x else "two-level" if isinstance(t.reduce, tuple) else
                 "stacked" if plan_for(t.spec, t.reduce).strategy == "decompose" else "direct", t, None) for t in ts.terms]
    rows, lines = [], [f"terms:     {len(ts.terms)}, each reduced over the same window"]
    for how, t, w in hows:
        be = backend
        if p is not None and how == "two-level" and twolevel.fused(backend, p.x):
            be = "fused"
        elif p is not None and how == "two-level" and twolevel.fused_triton(t.reduce, t.spec, p.x, backend):
            be = "fused-triton"
        elif p is not None and how in ("direct", "two-level") and backend == "auto":
            be = _backend_name(t, how, w, p)
        elif how == "two-level" and backend in ("auto", "tiled"):
            be = "fused" if backend == "tiled" else "either"
        red = t.reduce if isinstance(t.reduce, str) else f"({t.reduce[0]}, {t.reduce[1]})"
        rows.append((t.name, t.spec.source, t.reduce, how))
        lines.append(f"  {t.name} = {t.spec.source}   reduce {red}   {_how_text(t, how, be)}")
    items = [(t.spec, t.reduce, w) for how, t, w in hows if how == "stacked"]
    if items and p is not None:
        lines.append(f"stacked:   {stacked.describe(items, p.g)}")
    elif items:
        lines.append(f"stacked:   one native convolution over the union of the terms' g_i(x) "
                     f"({', '.join(t.name for how, t, _ in hows if how == 'stacked')})")
    text = ts.post_text or (ts.terms[0].name if ts.post is None else "")
    extra = f" (weights: {', '.join(n for n in ts.post_reads if n not in ts.names)})" \
        if any(n not in ts.names for n in ts.post_reads) else ""
    lines.append(f"post:      {text} per output element{extra}, in torch ops (exact autograd), then + bias")
    return TermsPlan(tuple(rows), text, tuple(lines))


def _backend_name(t: Term, how: str, w: dict, p: _Prepared) -> str:
    d, stride, padding, dilation, groups, padding_mode, backend = p.args
    if how == "direct":
        return calls.prepare_and_select(d, p.x, t.spec, w, None, stride, padding, dilation, groups, t.reduce,
                                        padding_mode, backend, shown=t.spec.source)[-1].name
    full = (broadcast_shapes(*(v.shape for v in w.values()))[0], p.g.cin_per_group) + p.g.kernel
    gi = make_geometry(d, tuple(p.x.shape), (p.g.in_channels * (full[0] // p.g.groups), 1) + p.g.kernel, stride,
                       padding, dilation, p.g.in_channels, padding_mode)
    return backends.select(backend, backends.Call(t.spec, t.reduce[0], gi, p.x.device, p.x.dtype)).name
