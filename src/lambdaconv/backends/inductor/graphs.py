"""The CPU direct path as functions of channels-last tensors, for Inductor to fuse (compile.py).

Every pass is one broadcast of the taps, shape (N, *A, G, OG, *K, CG), reduced over some of its
dims; Inductor never materializes it: it evaluates the op inside the reduction loop, vectorized
along CG, the dim that is contiguous in both the input and the weights. The caller lays the
tensors out (cheap next to the taps):

    x     (N, *Sp, C)      the padded input, channels last (Sp: padded spatial size)
    w     (G, OG, *K, CG)  each weight broadcast to its full size, in-channels last
    mask  (*Sp) bool       the taps that exist ("ignore" padding, transposed holes), or absent
    gy    (N, *out, O)     upstream gradient (divided by the count for "mean"), channels last
    gz    (N, *T, O)       gy zero-inserted (stride) and padded by (K - 1) * dilation per dim, so
                           that grad_x reads it through a stride-1 window: T = Sp + (K - 1) * dil
    mz    (*T) bool        where gz holds a real gy value

Passes (A = out for the forward and grad_w, A = Sp for grad_x):
    forward   reduce over (*K, CG): the op, masked to the reduction's identity
    winner    max/min's first winning tap per output (c-major index c * K + k, as torch.max over
              the tiled path's (CG * K) columns), by a second pass: the first tap equal to the max
    grad_w    reduce over (N, *out): s * d op / d w, s = gy (x softmax for logsumexp)
    grad_x    reduce over (OG, *K) with flipped weights: the transposed gather, so no scatter
"""
from __future__ import annotations

import math

import torch

from ...geometry import Geometry
from ...ir import evaluate_many
from .fastmath import PARTIALS, for_expr


def _strides(size: tuple, inner: int) -> list:
    """Row-major strides of a tensor (*size, inner) along size's dims."""
    return [inner * math.prod(size[i + 1:]) for i in range(len(size))]


class Shapes:
    """The static sizes of one call's passes (plain numbers; a graph closes over them)."""

    def __init__(self, g: Geometry):
        self.g, self.d = g, g.dims
        self.n, self.c, self.o = g.batch, g.in_channels, g.out_channels
        self.grp, self.og, self.cg = g.groups, g.cout_per_group, g.cin_per_group
        self.sp, self.out, self.k = g.padded_size, g.out_size, g.kernel
        self.t = tuple(s + (k - 1) * dl for s, k, dl in zip(self.sp, self.k, g.dilation))
        self.ktaps = g.taps
        self.full_out = (self.n,) + self.out + (self.grp, self.og) + self.k + (self.cg,)
        self.full_in = (self.n,) + self.sp + (self.grp, self.og) + self.k + (self.cg,)
        d = self.d
        self.red_fwd = tuple(range(d + 3, 2 * d + 4))  # *K, CG
        self.red_w = tuple(range(0, d + 1))  # N, *out
        self.red_x = tuple(range(d + 2, 2 * d + 3))  # OG, *K

    # views of the laid-out tensors as dims of the broadcast --------------------------------------

    def x_window(self, x):
        """(N, *out, G, 1, *K, CG): element [n, q, g, 0, k, c] = x[n, q * stride + k * dil, g * CG + c]."""
        g, st = self.g, _strides(self.sp, self.c)
        size = (self.n,) + self.out + (self.grp, 1) + self.k + (self.cg,)
        stride = ([self.c * math.prod(self.sp)] + [s * v for s, v in zip(st, g.stride)] + [self.cg, 0]
                  + [s * v for s, v in zip(st, g.dilation)] + [1])
        return x.as_strided(size, stride)

    def mask_window(self, m):
        """(1, *out, 1, 1, *K, 1) of a (*Sp) mask, as x_window."""
        g, st = self.g, _strides(self.sp, 1)
        size = (1,) + self.out + (1, 1) + self.k + (1,)
        stride = [0] + [s * v for s, v in zip(st, g.stride)] + [0, 0] + [s * v for s, v in zip(st, g.dilation)] + [0]
        return m.as_strided(size, stride)

    def weight(self, w):
        return w.reshape((1,) + (1,) * self.d + (self.grp, self.og) + self.k + (self.cg,))

    def per_output(self, t):
        """(N, *out, O) -> (N, *out, G, OG, 1.., 1): one value per output, broadcast over its taps."""
        return t.reshape((self.n,) + self.out + (self.grp, self.og) + (1,) * (self.d + 1))

    def x_point(self, x):
        """(N, *Sp, G, 1, 1.., CG): the input at each padded position (grad_x's outputs)."""
        return x.reshape((self.n,) + self.sp + (self.grp, 1) + (1,) * self.d + (self.cg,))

    def gz_window(self, gz):
        """(N, *Sp, G, OG, *K, 1): element [n, u, g, og, k'] = gz[n, u + k' * dil, g * OG + og]."""
        g, st = self.g, _strides(self.t, self.o)
        size = (self.n,) + self.sp + (self.grp, self.og) + self.k + (1,)
        stride = [self.o * math.prod(self.t)] + st + [self.og, 1] + [s * v for s, v in zip(st, g.dilation)] + [0]
        return gz.as_strided(size, stride)

    def mz_window(self, mz):
        g, st = self.g, _strides(self.t, 1)
        size = (1,) + self.sp + (1, 1) + self.k + (1,)
        stride = [0] + st + [0, 0] + [s * v for s, v in zip(st, g.dilation)] + [0]
        return mz.as_strided(size, stride)

    def to_output(self, r):
        """(N, *out, G, OG) -> (N, O, *out), contiguous."""
        return r.reshape((self.n,) + self.out + (self.o,)).movedim(-1, 1).contiguous()

    def winner_iota(self, device):
        """(*K, CG) int64: c * K + k, the tiled path's column index of each tap."""
        k = torch.arange(self.ktaps, device=device).reshape(self.k + (1,))
        return torch.arange(self.cg, device=device) * self.ktaps + k


def _full(t, shape):
    return t.expand(shape) if tuple(t.shape) != tuple(shape) else t


def forward_fn(spec, rec, s: Shapes, names: tuple, masked: bool, count, winner: bool):
    """fn(x, *weights[, mask][, counts]) -> [y (N, O, *out)] (+ [winner index] for max/min).
    count: taps per output for "mean" when every window has them all, else None (counts given)."""
    red = s.red_fwd

    def fn(x, *rest):
        ws = dict(zip(names, (s.weight(w) for w in rest[:len(names)])))
        extra = list(rest[len(names):])
        (t,) = evaluate_many([spec.expr], s.x_window(x), ws, scalars=True, fns=for_expr(spec.expr, x.dtype))
        t = _full(t, s.full_out)
        mask = extra.pop(0) if masked else None
        if masked:
            t = torch.where(s.mask_window(mask), t, rec.identity)
        if rec.backward == "select":
            v = t.amax(red) if rec.name == "max" else t.amin(red)
        elif rec.backward == "count":
            # taps per output: a number, or (*out) counts of the taps that exist (masked)
            v = t.sum(red) / (count if count is not None else extra.pop(0).reshape((1,) + s.out + (1, 1)))
        else:
            v = rec.reference(t, red, None)
        out = [s.to_output(v)]
        if winner:  # the taps again (compile.unshare gives this pass its own copy of them)
            # t != t is isnan(t) as a vector compare (Inductor's C++ isnan is a scalar loop per vector)
            hit = (t == v.reshape(v.shape + (1,) * (s.d + 1))) | (t != t)
            big = s.cg * s.ktaps
            out.append(s.to_output(torch.where(hit, s.winner_iota(x.device), big).amin(red)))
        return out

    return fn


def backward_fn(spec, rec, s: Shapes, names: tuple, masked: bool, need_x: bool, need_w: tuple):
    """fn(x, *weights, *flipped weights, gy, gz, mz[, mask][, y, yz]) -> [grad of the padded input
    (N, C, *Sp) or None] + [grad of each weight as (O, CG, *K), or None]; gy, gz, mz, y, yz as the
    module docstring (softmax: y is logsumexp's output before bias)."""
    parts = spec.partials(PARTIALS)
    soft = rec.backward == "softmax"
    nw = len(names)

    def fn(x, *rest):
        fns = for_expr(spec.expr, x.dtype)
        wts, flips = rest[:nw], rest[nw:2 * nw]
        gy, gz, mz, *extra = rest[2 * nw:]
        mask = extra.pop(0) if masked else None
        y, yz = (extra[0], extra[1]) if soft else (None, None)
        out = [None]
        if need_x:
            ws = dict(zip(names, (s.weight(w) for w in flips)))
            xv = s.x_point(x)
            vals = evaluate_many([parts[0]] + ([spec.expr] if soft else []), xv, ws, scalars=True, fns=fns)
            sc = s.gz_window(gz)
            if soft:
                sc = sc * torch.exp(vals[1] - s.gz_window(yz))
            term = torch.where(s.mz_window(mz), sc * vals[0], 0.0)
            gx = _full(term, s.full_in).sum(s.red_x)  # (N, *Sp, G, CG)
            out[0] = gx.reshape((s.n,) + s.sp + (s.c,)).movedim(-1, 1)
        if True in need_w:
            ws = dict(zip(names, (s.weight(w) for w in wts)))
            # one evaluation for every weight's partial: compile.unshare gives each reduction its
            # own copy of what they share, Inductor fuses the reductions into one loop nest, and
            # its CSE evaluates the shared subexpressions once
            vals = evaluate_many(list(parts[1:]) + ([spec.expr] if soft else []), s.x_window(x), ws, scalars=True,
                                 fns=fns)
            sc = s.per_output(gy)
            if soft:
                sc = sc * torch.exp(vals[-1] - s.per_output(y))
            for p, nd in zip(vals, need_w):
                if not nd:
                    out.append(None)
                    continue
                term = sc * p
                if masked:
                    term = torch.where(s.mask_window(mask), term, 0.0)
                gw = _full(term, s.full_out).sum(s.red_w)  # (G, OG, *K, CG)
                out.append(gw.movedim(-1, 2).reshape((s.o, s.cg) + s.k))
        return [t for t in out if t is not None]

    return fn
