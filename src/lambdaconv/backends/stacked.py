"""Several separable terms (op={...} with sum / mean reductions) as ONE native convolution.

Each term t is op_t(x, w) = sum_i g_i(x) h_ti(w) + c_t(w) (ir.sympy_bridge.separate, as for a
single op in decompose.py). The input is stacked once over the union of the g_i of every term
(x shared by x*W and (x-W)**2 is one slot), the weight is every term's block of rows, with zeros
where a term does not use a g_i, and one convNd call gives every term's sum:

    [t_1, ..., t_m] = convNd(stack_i g_i(x_pad), cat_t [h_t1(w), ..., h_tT(w)]) + sum_taps c_t(w)

Rows are interleaved per group (group-major), as a grouped convolution needs. A term without
weights arrives with one weight of ones per group (terms.py), so it costs one row per group, not
one per filter. Borders are handled as decompose.py does: x is padded before the g_i unless every
g_i(0) == 0 and the padding is symmetric zeros, or "ignore" (g_i(x) zero-padded, constants and
counts following the validity mask). The zero blocks cost multiply-adds: explain() says how much
of the stacked weight is zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reductions
from ..geometry import Geometry, pad_input
from ..ir.sympy_bridge import separate, value_at_zero
from .composite import transform_active
from .decompose import _CONV, _Stack, _compile, _dtypes, _full, _mask, _stack_cfg, _term


def layout(specs) -> tuple:
    """(the union of the g_i in first-use order, per spec its [(slot, h_i)], c(w) split as (k, rest) or ())."""
    slots, per = {}, []
    for spec in specs:
        sep = separate(spec.expr)
        per.append(([(slots.setdefault(gx, len(slots)), h) for gx, h in sep.terms], sep.const_split))
    return tuple(slots), per


def describe(items, g: Geometry) -> str:
    """One line for explain(): the stacked conv's channels and how much of its weight is zero."""
    gs, per = layout([spec for spec, _, _ in items])
    rows = [_rows(ws, g) for _, _, ws in items]
    used = sum(len({s for s, _ in p}) * r for (p, _), r in zip(per, rows))
    total = len(gs) * sum(rows)
    return (f"one native conv{g.dims}d: input [{', '.join(map(str, gs))}] ({len(gs)} x {g.in_channels} channels) "
            f"-> {sum(rows)} output channels; {100 * (1 - used / total):.0f}% of its weight blocks are zero")


def _rows(ws: dict, g: Geometry) -> int:
    return torch.broadcast_shapes(*(w.shape for w in ws.values()))[0]


def run(x, items, g: Geometry) -> list:
    """items: [(spec, reduce, weights)] of separable terms (weights broadcastable to (O_t, Cg, *k));
    returns each term's reduction as (N, groups, O_t / groups, *out) in the conv dtype."""
    ct, cd = _dtypes(x)
    G, Cg, dev = g.groups, g.cin_per_group, x.device
    gs, per = layout([spec for spec, _, _ in items])
    terms = tuple(_term(gx) for gx in gs)
    padded = any(lo or hi for lo, hi in g.pad)
    symmetric = all(lo == hi for lo, hi in g.pad)
    ignore = g.padding_mode == "ignore" and padded
    zero_safe = all(value_at_zero(gx) == 0.0 for gx in gs)
    native = padded and symmetric and (ignore or (g.padding_mode == "zeros" and zero_safe))
    xin = pad_input(x, g) if padded and not native and not ignore else x
    if len(terms) == 1 and terms[0].kind == "x":
        S = xin if xin.dtype == cd else xin.to(cd)
    elif torch.compiler.is_compiling() or transform_active():  # aten ops only
        gx = [t.g(xin if xin.dtype == ct else xin.to(ct), None).to(cd) for t in terms]
        S = torch.stack([t.unflatten(1, (G, Cg)) for t in gx], 2).flatten(1, 3)
    else:
        stack = _stack_cfg(terms, G)
        S = (_Stack.apply if torch.is_grad_enabled() and xin.requires_grad else _Stack.run)(xin, stack, ct, cd)
    if ignore and not native:
        S = F.pad(S, [v for lh in reversed(g.pad) for v in lh])

    blocks, rows, consts = [], [], []
    for (spec, reduce, ws), (hs, split) in zip(items, per):
        w = {n: t if t.dtype == ct else t.to(ct) for n, t in ws.items()}
        o_t = _rows(ws, g)
        full = (o_t, Cg) + g.kernel
        cols = [None] * len(gs)
        for slot, h in hs:
            v = _full(_compile(h)(None, w), full, ct, dev)
            cols[slot] = v if cols[slot] is None else cols[slot] + v
        zero = torch.zeros(full, dtype=ct, device=dev)
        H = torch.cat([zero if c is None else c for c in cols], 1)  # (O_t, T*Cg, *k), T-major as the stack
        mean = reductions.get(reduce).backward == "count"
        if mean and not ignore:
            H = H / (Cg * g.taps)
        blocks.append(H.unflatten(0, (G, o_t // G)))
        rows.append(o_t // G)
        cw = None if not split else split[0] * _full(_compile(split[1])(None, w), full, ct, dev)
        consts.append((cw, mean))
    H = torch.cat(blocks, 1).flatten(0, 1)
    y = _CONV[g.dims](S, H if H.dtype == cd else H.to(cd), None, g.stride,
                      tuple(lo for lo, _ in g.pad) if native else 0, g.dilation, G)
    outs = y.unflatten(1, (G, sum(rows))).split(rows, 2)
    mask = _mask(g, dev, ct) if ignore else None
    result = []
    for y_t, o, (cw, mean) in zip(outs, rows, consts):
        if ignore:
            y_t = _ignore(y_t.to(ct), cw, mean, mask, g, o)
        elif cw is not None:
            s = cw.sum(tuple(range(1, g.dims + 2)))
            y_t = y_t + (s / (Cg * g.taps) if mean else s).reshape((1, G, o) + (1,) * g.dims).to(y_t.dtype)
        result.append(y_t)
    return result


def _ignore(y_t, cw, mean, mask, g: Geometry, o: int):
    """padding_mode="ignore": the constant at valid taps only (the mask convolved with it) and the
    mean over the valid taps (the mask convolved with ones; NaN where a window has none)."""
    conv, lay = _CONV[g.dims], (y_t.shape[0], g.groups, o) + tuple(y_t.shape[3:])
    if cw is not None:
        y_t = y_t + conv(mask, cw.sum(1, keepdim=True), None, g.stride, 0, g.dilation).reshape((1,) + lay[1:])
    if mean:
        ones = torch.ones((1, 1) + g.kernel, dtype=mask.dtype, device=mask.device)
        count = conv(mask, ones, None, g.stride, 0, g.dilation).reshape((1, 1, 1) + lay[3:]) * g.cin_per_group
        has = count > 0
        y_t = y_t * torch.where(has, 1.0 / count, 0.0) + torch.where(has, 0.0, float("nan"))
    return y_t
