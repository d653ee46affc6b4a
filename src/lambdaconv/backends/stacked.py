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

What is the same for every filter (a weight-free term's row, and a g_i(x) whose h_i is a number,
as x**2 in (x-W)**2) goes to a second, narrow conv of one row per group (_split) when that leaves
g_i out of the wide one: Kervolution's Gaussian and sharpened cosine similarity then cost one conv
over x plus one over x**2 with a single output channel, not one conv over [x, x**2].
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import reductions
from ..geometry import Geometry, broadcast_shapes, pad_input
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
    """One line for explain(): the stacked convs' channels and how much of the wide one's weight is zero."""
    gs, per = layout([spec for spec, _, _ in items])
    rows = [_rows(ws, g) for _, _, ws in items]
    main, narrow, how = _split(rows, per, g.groups)
    wide = [(p, r, shared) for p, r, (conv, shared) in zip(per, rows, how) if conv == "main"]
    used = sum(len({s for s, _ in p[0]} - set(shared)) * r for p, r, shared in wide)
    total = len(main) * sum(r for _, r, _ in wide)
    line = (f"one native conv{g.dims}d: input [{', '.join(str(gs[s]) for s in main)}] ({len(main)} x "
            f"{g.in_channels} channels) -> {sum(r for _, r, _ in wide)} output channels; "
            f"{100 * (1 - used / total):.0f}% of its weight blocks are zero")
    if narrow:
        n_rows = sum(r for r, (conv, _) in zip(rows, how) if conv == "narrow") // g.groups + \
            len({s for _, shared in how for s in shared})
        line += (f"; one of input [{', '.join(str(gs[s]) for s in narrow)}] -> {n_rows} output channel(s) per group "
                 f"(what is the same for every filter)")
    return line


def _rows(ws: dict, g: Geometry) -> int:
    return broadcast_shapes(*(w.shape for w in ws.values()))[0]


def _split(rows, per, G) -> tuple:
    """(main slots, narrow slots, per item: its conv and its shared slots {slot: h value}).

    A term of one row per group (a weight-free term's weight of ones) and the weight-free parts of
    the others (a g_i(x) whose h_i is a number, as x**2 in (x-W)**2 = x**2 - 2xW + W**2) are the
    same for every filter: they go to a second, narrow conv (one row per group) when that leaves
    g_i out of the wide one, whose cost is (its slots x in_channels) x out_channels."""
    main, narrow, how = {}, {}, []
    for o_t, (hs, _) in zip(rows, per):
        if o_t == G:
            how.append(("narrow", {}))
            for slot, _h in hs:
                narrow.setdefault(slot, None)
            continue
        shared = {}
        for slot, h in hs:
            if h.is_const:
                shared[slot] = shared.get(slot, 0.0) + h.value
                narrow.setdefault(slot, None)
            else:
                main.setdefault(slot, None)
        how.append(("main", shared))
    if not main or set(narrow) <= set(main):  # nothing saved: every term in one conv, as written
        return tuple(sorted(set(main) | set(narrow))), (), [("main", {}) for _ in rows]
    return tuple(main), tuple(narrow), how


def _stack(xin, terms, G, ct, cd):
    if len(terms) == 1 and terms[0].kind == "x":
        return xin if xin.dtype == cd else xin.to(cd)
    if torch.compiler.is_compiling() or transform_active():  # aten ops only
        gx = [t.g(xin if xin.dtype == ct else xin.to(ct), None).to(cd) for t in terms]
        return torch.stack([t.unflatten(1, (G, xin.shape[1] // G)) for t in gx], 2).flatten(1, 3)
    stack = _stack_cfg(terms, G)
    return (_Stack.apply if torch.is_grad_enabled() and xin.requires_grad else _Stack.run)(xin, stack, ct, cd)


class _Plan(NamedTuple):
    """What run() does for a call, apart from the weights' values: built once per (terms, weight
    rows, geometry) under a cache (the IR walks and the layout cost more host time than the conv)."""
    terms: tuple  # the stack's g_i as decompose._term
    per: list  # layout()'s per-term [(slot, h_i)], c(w) split
    native: bool  # the conv pads (symmetric zeros with every g_i(0) == 0, or "ignore")
    pad_first: bool  # x is padded before the g_i
    ignore: bool  # "ignore" padding with some padding
    main_slots: tuple
    narrow_slots: tuple
    how: list  # per term: its conv ("main" / "narrow") and its shared slots
    scale: tuple  # per term: 1 / taps for mean (not under "ignore"), else 1
    ones_at: dict  # narrow slot -> the index of its row of ones


@functools.lru_cache(maxsize=256)
def _plan(specs: tuple, reduces: tuple, rows: tuple, g: Geometry) -> _Plan:
    gs, per = layout(specs)
    padded = any(lo or hi for lo, hi in g.pad)
    symmetric = all(lo == hi for lo, hi in g.pad)
    ignore = g.padding_mode == "ignore" and padded
    zero_safe = all(value_at_zero(gx) == 0.0 for gx in gs)
    native = padded and symmetric and (ignore or (g.padding_mode == "zeros" and zero_safe))
    main_slots, narrow_slots, how = _split(rows, per, g.groups)
    scale = tuple(1.0 / (g.cin_per_group * g.taps) if reductions.get(r).backward == "count" and not ignore else 1.0
                  for r in reduces)
    ones_at = {}
    for _conv, shared in how:
        for slot in shared:
            ones_at.setdefault(slot, len(ones_at))
    return _Plan(tuple(_term(gx) for gx in gs), per, native, padded and not native and not ignore, ignore,
                 main_slots, narrow_slots, how, scale, ones_at)


_ONES: dict = {}  # never evicted: a CUDA graph captured with one of these keeps reading it


def _ones_row(G: int, slots: int, k: int, Cg: int, kernel: tuple, dtype, device) -> torch.Tensor:
    """(G, 1, slots * Cg, *kernel): ones at slot k's channels, a constant only ever read, made once
    per layout (a few elements each). Not cached while a CUDA graph is being captured: its fill
    would only be recorded, and later eager calls would read memory never written."""
    key = (G, slots, k, Cg, kernel, dtype, device)
    H = _ONES.get(key)
    if H is None:
        with torch.inference_mode(False):  # made under inference_mode, conv could not save it for a backward
            H = torch.zeros((G, 1, slots * Cg) + kernel, dtype=dtype, device=device)
            H[:, :, k * Cg:(k + 1) * Cg] = 1.0
        if not (H.is_cuda and torch.cuda.is_current_stream_capturing()):
            _ONES[key] = H
    return H


def run(x, items, g: Geometry) -> list:
    """items: [(spec, reduce, weights)] of separable terms (weights broadcastable to (O_t, Cg, *k));
    returns each term's reduction as (N, groups, O_t / groups, *out) in the conv dtype."""
    ct, cd = _dtypes(x)
    G, Cg, dev = g.groups, g.cin_per_group, x.device
    rows_t = tuple(_rows(ws, g) for _, _, ws in items)
    pl = _plan(tuple(spec for spec, _, _ in items), tuple(r for _, r, _ in items), rows_t, g)
    terms, how, main_slots, narrow_slots, ignore = pl.terms, pl.how, pl.main_slots, pl.narrow_slots, pl.ignore
    xin = pad_input(x, g) if pl.pad_first else x
    blocks = {"main": [], "narrow": []}
    consts = []
    for (spec, reduce, ws), (hs, split), (conv, shared), o_t, scale in zip(items, pl.per, how, rows_t, pl.scale):
        w = {n: t if t.dtype == ct else t.to(ct) for n, t in ws.items()}
        full = (o_t, Cg) + g.kernel
        slots = main_slots if conv == "main" else narrow_slots
        cols = [None] * len(slots)
        for slot, h in hs:
            if slot in shared:
                continue
            v = _full(_compile(h)(None, w), full, ct, dev)
            k = slots.index(slot)
            cols[k] = v if cols[k] is None else cols[k] + v
        if len(cols) == 1 and cols[0] is not None:
            H = cols[0] if scale == 1.0 else cols[0] * scale
        else:
            zero = torch.zeros(full, dtype=ct, device=dev)
            H = torch.cat([zero if c is None else c for c in cols], 1) * scale  # T-major as the stack
        blocks[conv].append(H.unflatten(0, (G, o_t // G)))
        cw = None if not split else split[0] * _full(_compile(split[1])(None, w), full, ct, dev)
        consts.append((cw, reductions.get(reduce).backward == "count", o_t // G))
    for slot in pl.ones_at:  # the wide terms' weight-free parts: a row of ones per group in the narrow conv
        blocks["narrow"].append(_ones_row(G, len(narrow_slots), narrow_slots.index(slot), Cg, g.kernel, ct, dev))
    outs = {}
    for conv, slots in (("main", main_slots), ("narrow", narrow_slots)):
        if not blocks[conv]:
            continue
        S = _stack(xin, tuple(terms[s] for s in slots), G, ct, cd)
        if ignore and not pl.native:
            S = F.pad(S, [v for lh in reversed(g.pad) for v in lh])
        H = blocks[conv][0] if len(blocks[conv]) == 1 else torch.cat(blocks[conv], 1)
        rows = [b.shape[1] for b in blocks[conv]]
        H = H.flatten(0, 1)
        y = _CONV[g.dims](S, H if H.dtype == cd else H.to(cd), None, g.stride,
                          tuple(lo for lo, _ in g.pad) if pl.native else 0, g.dilation, G)
        y = y.unflatten(1, (G, sum(rows)))
        outs[conv] = [y] if len(rows) == 1 else list(y.split(rows, 2))
    ones_rows = outs["narrow"][len(outs["narrow"]) - len(pl.ones_at):] if pl.ones_at else []
    mask = _mask(g, dev, ct) if ignore else None
    result, taken = [], {"main": 0, "narrow": 0}
    for i, ((conv, shared), (cw, mean, o)) in enumerate(zip(how, consts)):
        y_t = outs[conv][taken[conv]]
        taken[conv] += 1
        for slot, value in shared.items():  # the same for every filter of the group: broadcast over them
            y_t = y_t + (value * pl.scale[i]) * ones_rows[pl.ones_at[slot]]
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
