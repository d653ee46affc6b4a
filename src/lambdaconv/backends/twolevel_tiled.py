"""Two-level reductions (reduce=(inner, outer)) fused tile by tile, in torch ops, any device.

The tiled backend's tiles (backends/tiles.py): each tile's (Ot, Mt, Cg*K) taps are viewed as
(Ot, Mt, Cg, K), reduced over K by the inner reduction and over Cg by the outer one, so no
per-channel intermediate is ever larger than a tile (the depthwise route in twolevel.py writes
in_channels/groups times the output). The backward recomputes each tile's taps and takes torch's
gradient of the tile's two reductions (autograd on the tile: every pair of reductions, exact, with
torch's conventions: max / min send the gradient to the first winner), then scatters the columns'
gradient into the input as the tiled backend does. Under create_graph=True the gradients come from
the definition (reference.reference_conv with the pair) so that they are differentiable again.
"""
from __future__ import annotations

import torch

from .. import reductions
from ..geometry import Geometry, pad_input, valid_taps, windows
from ..ir import evaluate
from ..reference import reference_conv
from .composite import compute_dtype, graph_grads
from .tiled import tile_budget_for
from .tiles import read_tile, scatter_cols, tile_cols, tile_valid, tiles, write_tile


def _tile_value(spec, reduce, g: Geometry, cols, tw: dict, valid, t):
    """(Ot, Mt): OUTER over Cg of INNER over K of the tile's taps (cols (1, Mt, CK), tw name -> (Ot, 1, CK))."""
    inner, outer = (reductions.get(r) for r in reduce)
    taps = evaluate(spec.expr, cols, tw)
    shape = (next(iter(tw.values())).shape[0], cols.shape[1], cols.shape[2])
    taps = taps.expand(shape) if taps.shape != shape else taps
    cg, k = g.cin_per_group, g.taps
    if valid is None:
        count = torch.tensor(k, device=cols.device)
    else:
        ok = tile_valid(valid, t, g).to(cols.device)  # (Mt, CK)
        taps = torch.where(ok, taps, inner.identity)
        count = ok.view(-1, cg, k).sum(-1)  # valid taps per position, the same for every channel
    per_c = inner.reference(taps.view(shape[:2] + (cg, k)), -1, count)
    return outer.reference(per_c, -1, torch.tensor(cg, device=cols.device))


class TwoLevelTiled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec, g, reduce, names, *wts):
        ct = compute_dtype(x.dtype)
        win = windows(pad_input(x.to(ct), g), g)
        w = _rows(wts, g, ct)
        valid = valid_taps(g, x.device) if g.padding_mode == "ignore" and any(lo or hi for lo, hi in g.pad) else None
        y = torch.empty((g.batch, g.out_channels) + g.out_size, dtype=ct, device=x.device)
        for t in tiles(g, tile_budget_for(x.device)):
            cols = tile_cols(win, t, g)[None]
            write_tile(y, t, g, _tile_value(spec, reduce, g, cols, {n: v[t.o][:, None, :] for n, v in zip(names, w)},
                                            valid, t))
        ctx.save_for_backward(x, *wts)
        ctx.meta = (spec, g, reduce, names)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, *wts = ctx.saved_tensors
        spec, g, reduce, names = ctx.meta
        ct = compute_dtype(x.dtype)
        if torch.is_grad_enabled():  # create_graph=True: the definition, differentiable again
            def fn(x, *w):
                return reference_conv(x, spec, dict(zip(names, w)), None, g, reduce, dtype=ct).to(x.dtype)
            gx, *gws = graph_grads(fn, [x, *wts], ctx.needs_input_grad[:1] + ctx.needs_input_grad[5:], gy)
            return (gx, None, None, None, None, *gws)
        xr = x.detach().to(ct).requires_grad_(ctx.needs_input_grad[0])
        with torch.enable_grad():
            xp = pad_input(xr, g)
        gxp = torch.zeros(xp.shape, dtype=ct, device=x.device)
        win, gwin = windows(xp.detach(), g), windows(gxp, g)
        w = _rows(wts, g, ct)
        gw = [torch.zeros_like(v) for v in w]
        valid = valid_taps(g, x.device) if g.padding_mode == "ignore" and any(lo or hi for lo, hi in g.pad) else None
        gy = gy.to(ct)
        for t in tiles(g, tile_budget_for(x.device)):
            with torch.enable_grad():
                cols = tile_cols(win, t, g)[None].requires_grad_()
                tw = {n: v[t.o][:, None, :].requires_grad_() for n, v in zip(names, w)}
                r = _tile_value(spec, reduce, g, cols, tw, valid, t)
            grads = torch.autograd.grad(r, [cols, *tw.values()], read_tile(gy, t, g), allow_unused=True)
            if grads[0] is not None:
                scatter_cols(gwin, t, g, grads[0][0])
            for acc, gt in zip(gw, grads[1:]):
                if gt is not None:
                    acc[t.o] += gt[:, 0]
        gx = torch.autograd.grad(xp, xr, gxp)[0].to(x.dtype) if ctx.needs_input_grad[0] else None
        full = (g.out_channels, g.cin_per_group) + g.kernel
        gws = [a.reshape(full).sum_to_size(v.shape).to(v.dtype) if need else None
               for a, v, need in zip(gw, wts, ctx.needs_input_grad[5:])]
        return (gx, None, None, None, None, *gws)


def _rows(wts, g: Geometry, ct) -> list:
    """Each weight as (O, Cg*K) rows, so that a tile's weights are a slice."""
    full = (g.out_channels, g.cin_per_group) + g.kernel
    return [w.to(ct).expand(full).reshape(g.out_channels, -1) for w in wts]


def run(x, spec, ws: dict, reduce: tuple, g: Geometry) -> torch.Tensor:
    """(N, O, *out) in x's dtype; ws broadcast to (O, Cg, *k), g's out_channels is theirs."""
    return TwoLevelTiled.apply(x, spec, g, reduce, tuple(ws), *ws.values())
