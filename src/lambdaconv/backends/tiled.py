"""The direct path in torch ops: evaluate the op tile by tile and reduce, any device.

Never materializes the (N, O, C*K, P) taps tensor: each tile's (Ot, Mt, CK) taps live only
inside one loop step, so memory is bounded by settings.tile_elements whatever the input size. The
backward recomputes each tile and applies the op's symbolic partials (ir.grad), weighted by the
reduction: 1 (sum), 1/count (mean), softmax (logsumexp); max/min gather the winning tap saved by
the forward and do O(outputs) work.

Every tensor the backward reads is saved with save_for_backward (x, the weights as given, the
forward's own y / winners), so an in-place change between forward and backward raises as torch's
ops do. With create_graph=True the backward is differentiated again: it then computes the gradients
through composite.graph_grads (the definition in torch ops, unfold-like memory) instead of these
once-differentiable loops.
"""
from __future__ import annotations

import torch

from .. import reductions, settings
from ..geometry import Geometry, pad_input, valid_taps, windows
from ..ir import OpSpec, evaluate, evaluate_many
from ..ir.expr import peel_scale
from .composite import compute_dtype, direct_backward
from .tiles import buffer, read_tile, scatter_cols, tile_cols, tile_valid, tiles, write_tile


class _Ctx:
    """What forward and backward share for one call: geometry, op, weights per group, masks."""

    def __init__(self, spec: OpSpec, g: Geometry, reduce: str, names, wts, device, ct):
        self.spec, self.g, self.reduce, self.names, self.ct = spec, g, reduce, names, ct
        og, ck = g.cout_per_group, g.cin_per_group * g.taps
        # Every weight expanded to (O, Cg*K), so a tile's weights are rows of one matrix.
        self.w = {n: w.to(ct).expand((g.out_channels, g.cin_per_group) + g.kernel).reshape(g.out_channels, ck)
                  for n, w in zip(names, wts)}
        self.valid = None
        if g.padding_mode == "ignore" and any(lo or hi for lo, hi in g.pad):
            self.valid = valid_taps(g, device)
        self.og = og

    def tile_weights(self, t):
        return {n: w[t.o][:, None, :] for n, w in self.w.items()}  # (Ot, 1, CK)

    def count(self, t, device):
        """Taps per output row for "mean": Cg*K, or the valid ones under "ignore" padding."""
        g = self.g
        if self.valid is None:
            return torch.full((t.rows(g),), g.cin_per_group * g.taps, dtype=self.ct, device=device)
        return tile_valid(self.valid, t, g).sum(1).to(self.ct)


def tile_budget(w: dict):
    return tile_budget_for(next(iter(w.values())).device)


def tile_budget_for(device) -> int:
    s = settings.get()  # read per call: tests shrink the budget to force many tiles
    return s.tile_elements if device.type == "cpu" else s.tile_elements_gpu


def _full(v: torch.Tensor, shape) -> torch.Tensor:
    return v.expand(shape) if v.shape != shape else v


def _masked(taps, t, c: _Ctx, fill):
    if c.valid is None:
        return taps
    return torch.where(tile_valid(c.valid, t, c.g).to(taps.device), taps, fill)


class TiledConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, spec, g, reduce, names, *wts):
        ct = compute_dtype(x.dtype)
        c = _Ctx(spec, g, reduce, names, wts, x.device, ct)
        win = windows(pad_input(x.to(ct), g), g)
        y = torch.empty((g.batch, g.out_channels) + g.out_size, dtype=ct, device=x.device)
        rec = reductions.get(reduce)
        arg = None
        if rec.backward == "select":
            arg = torch.empty(y.shape, dtype=torch.int64, device=x.device)
        arena = {}  # scratch buffers reused by every tile of the same shape
        # a reduction with a `negated` one commutes with a positive constant factor (sum, mean, max,
        # min): reduce the core, scale the result; a negative factor swaps it for the negated one
        scale, core = peel_scale(spec.expr) if rec.negated is not None else (1.0, spec.expr)
        if scale < 0:
            rec = reductions.get(rec.negated)
        for t in tiles(g, tile_budget(c.w)):
            cols = tile_cols(win, t, g, arena)[None]  # (1, Mt, CK)
            taps = evaluate(core, cols, c.tile_weights(t), dtype=ct, arena=arena)
            shape = (t.o.stop - t.o.start, t.rows(g), cols.shape[-1])
            taps = _masked(_full(taps, shape), t, c, rec.identity)
            if rec.backward == "select":
                r = buffer(arena, "r", shape[:2], ct, x.device)
                i = buffer(arena, "i", shape[:2], torch.int64, x.device)
                rec.select(taps, -1, out=(r, i))
                write_tile(arg, t, g, i)
            else:  # the record's definition over the tile's taps: (Ot, Mt), CK times smaller than taps
                r = rec.reference(taps, -1, c.count(t, x.device) if rec.backward == "count" else None)
            if scale != 1.0:
                r *= scale
            write_tile(y, t, g, r)
        return save_and_finish(ctx, x, y, arg, wts, bias, (spec, g, c.reduce, names), rec, ct)

    @staticmethod
    def backward(ctx, gy):
        x, y, arg, *wts = ctx.saved_tensors
        spec, g, reduce, names = ctx.meta
        if torch.is_grad_enabled():  # create_graph=True: gradients that are differentiable again
            n = ctx.needs_input_grad
            gx, gb, gws = direct_backward(gy, x, wts, ctx.meta, (n[0], n[1], *n[6:]), ctx.bias_dtype)
            return (gx, gb, None, None, None, None, *gws)
        ct = compute_dtype(x.dtype)
        c = _Ctx(spec, g, reduce, names, wts, x.device, ct)  # from the saved weights
        gy = gy.to(ct)
        need_x = ctx.needs_input_grad[0]
        xr = x.detach().to(ct).requires_grad_(need_x)
        with torch.enable_grad():
            xp = pad_input(xr, g)
        gxp = torch.zeros(xp.shape, dtype=ct, device=x.device)
        gw = {n: torch.zeros(w.shape, dtype=w.dtype, device=w.device) for n, w in c.w.items()}
        win = windows(xp.detach(), g)
        if reductions.get(c.reduce).backward == "select":
            _backward_select(c, win, gxp, gw, gy, arg)
        else:
            _backward_dense(c, win, gxp, gw, gy, y, ctx)
        gx, gb, gws = finish_backward(ctx, x, xr, xp, gxp, gw, gy, g, c.names, wts, ctx.needs_input_grad[6:])
        return (gx, gb, None, None, None, None, *gws)


def save_and_finish(ctx, x, y, arg, wts, bias, meta, rec, ct):
    """The end of a direct Function's forward: save what backward reads, add the bias, cast back.

    The weights as given, never a derived copy: a copy (or a view of it) would not see, or would
    silently follow, an in-place update before backward. logsumexp's backward needs the reduced
    value itself (softmax = exp(tap - y)), before bias; the winners for max / min. The bias is
    never read."""
    ctx.save_for_backward(x, y if rec.saves == "value" else None, arg, *wts)
    ctx.meta = meta
    ctx.bias_dtype = None if bias is None else bias.dtype
    if bias is not None:
        y = y + bias.to(ct).reshape((1, -1) + (1,) * meta[1].dims)
    return y.to(x.dtype)


def finish_backward(ctx, x, xr, xp, gxp, gw: dict, gy, g: Geometry, names, wts, need_w):
    """(grad x, grad bias, [grad of each weight]) from the padded input's gradient gxp (through
    the padding's own adjoint: xp = pad_input(xr) was recorded) and each weight's full-size
    gradient gw[name] (reshapeable to (O, CG, *K)), summed back to the weight's broadcast shape."""
    gx = None
    if ctx.needs_input_grad[0]:
        (gx,) = torch.autograd.grad(xp, xr, gxp)
        gx = gx.to(x.dtype)
    gb = None
    if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
        gb = gy.sum([0] + list(range(2, 2 + g.dims))).to(ctx.bias_dtype)
    gws = []
    for w, n, need in zip(wts, names, need_w):
        if not need:
            gws.append(None)
            continue
        full = gw[n].reshape((g.out_channels, g.cin_per_group) + g.kernel)
        gws.append(full.sum_to_size(w.shape).to(w.dtype))
    return gx, gb, gws


def _backward_dense(c: _Ctx, win, gxp, gw, gy, y, ctx):
    """uniform / count / softmax kinds: per tile, s = upstream x the tap's weight in the reduction
    (1, 1 / count, exp(tap - y)); grads = sum s * partials."""
    g, spec, ct = c.g, c.spec, c.ct
    kind = reductions.get(c.reduce).backward
    # (d/dx, d/dw...), each as scale * core: the gradients are linear in the partials, so the core
    # is reduced over the tile and the (small) result scaled
    scales, cores = zip(*(peel_scale(p) for p in spec.partials()))
    gwin = windows(gxp, g)
    arena = {}
    dev = gy.device
    exprs = list(cores) + ([spec.expr] if kind == "softmax" else [])
    for t in tiles(g, tile_budget(c.w)):
        cols = tile_cols(win, t, g, arena)[None]
        ot, mt, ck = t.o.stop - t.o.start, t.rows(g), cols.shape[-1]
        shape = (ot, mt, ck)
        gt = read_tile(gy, t, g)  # (Ot, Mt)
        vals = evaluate_many(exprs, cols, c.tile_weights(t), dtype=ct, arena=arena)
        if kind == "count":
            gt = gt / c.count(t, dev)
        if kind == "softmax":  # softmax weight of each tap: exp(tap - logsumexp)
            s = buffer(arena, "s", shape, ct, dev)
            torch.sub(_full(vals[-1], shape), read_tile(y, t, g)[:, :, None], out=s)
            s.exp_().mul_(gt[:, :, None])
        else:
            s = gt[:, :, None]
        prod = buffer(arena, "prod", shape, ct, dev)
        if ctx.needs_input_grad[0]:
            torch.mul(s.expand(shape), vals[0], out=prod)
            gcols = torch.sum(_masked(prod, t, c, 0.0), 0, out=buffer(arena, "gcols", shape[1:], ct, dev))
            if scales[0] != 1.0:
                gcols *= scales[0]
            scatter_cols(gwin, t, g, gcols)
        for n, pw, sc, need in zip(c.names, vals[1:1 + len(c.names)], scales[1:], ctx.needs_input_grad[6:]):
            if not need:
                continue
            if kind != "softmax" and c.valid is None and pw.shape == shape:
                part = torch.bmm(gt[:, None, :], pw).squeeze(1)  # sum over Mt as a matmul
            else:
                torch.mul(s.expand(shape), pw, out=prod)
                part = _masked(prod, t, c, 0.0).sum(1)
            gw[n][t.o] += part * sc if sc != 1.0 else part


def _backward_select(c: _Ctx, win, gxp, gw, gy, arg):
    """max / min: the gradient goes to the one winning tap per output (O(outputs) work)."""
    g, ct = c.g, c.ct
    d, cg, K = g.dims, g.cin_per_group, g.taps
    dev = gy.device
    N, O, P = g.batch, g.out_channels, g.positions
    a = arg.reshape(N, O, P)
    ci, ki = a // K, a % K  # in-channel within the group, kernel offset
    o_idx = torch.arange(O, device=dev).reshape(1, O, 1)
    c_idx = (o_idx // c.og) * cg + ci  # global input channel
    n_idx = torch.arange(N, device=dev).reshape(N, 1, 1)
    pos = torch.arange(P, device=dev)
    out_multi = torch.unravel_index(pos, g.out_size)
    k_multi = torch.unravel_index(ki, g.kernel)
    xv = win[(n_idx, c_idx) + tuple(m.reshape(1, 1, P) for m in out_multi) + tuple(k_multi)]
    wv = {n: w[o_idx, a] for n, w in c.w.items()}  # (N, O, P)
    vals = evaluate_many(list(c.spec.partials()), xv, wv, dtype=ct)
    gyf = gy.reshape(N, O, P)
    if c.valid is not None:  # a window with no valid tap selected a padded one: no gradient
        gyf = torch.where(c.valid[ki, pos.reshape(1, 1, P)], gyf, 0.0)
    # padded-input coordinates of each winner: p * stride + k * dilation per dim
    lin = n_idx * g.in_channels + c_idx
    for i in range(d):
        coord = out_multi[i].reshape(1, 1, P) * g.stride[i] + k_multi[i] * g.dilation[i]
        lin = lin * g.padded_size[i] + coord
    gxp.view(-1).index_add_(0, lin.reshape(-1), _full(gyf * vals[0], gyf.shape).reshape(-1))
    for n, pw in zip(c.names, vals[1:]):
        flat = (o_idx * (cg * K) + a).reshape(-1)
        gw[n].view(-1).index_add_(0, flat, _full(gyf * pw, gyf.shape).reshape(-1))
