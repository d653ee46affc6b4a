"""A transposed convolution as one stride-1 convolution per output phase (sub-pixel decomposition).

The outputs q with q % stride == r (per dim) are reached by the kernel offsets k with
(r + padding - k * dilation) % stride == 0 only, each reading input p = j + (r + padding -
k * dilation) / stride for the phase's j-th output: a plain stride-1 convolution of the real
input values with the sub-kernel of those offsets (flipped, dilation dilation / gcd(stride,
dilation)), under "ignore" padding where its window leaves the input. So every tap is real: no
inserted zeros are stored or skipped, and the direct kernels that take no holes (triton) run it.
Each phase is an ordinary call of the backend, so its gradients are the backend's own and
autograd sums grad_x over the phases; the phases' outputs are interleaved into y.

A phase that no offset reaches (stride and dilation sharing a factor), or whose window misses the
input, holds the reduction's identity (NaN for mean), plus the bias.

`split_borders` cuts each "ignore" phase into its interior (every window inside the input: plain
zero padding of width 0, which the Gluon forward runs) and the thin border pieces whose windows
leave the input (still "ignore": the portable kernel). For k3 s2 p1 op1 in 2-d that is 9 calls
instead of 4, nearly all of the taps in the interior ones.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple

import torch

from . import backends, calls, reductions
from .geometry import Geometry


class Phase(NamedTuple):
    out: tuple  # per dim: the slice of y it fills (r::stride)
    crop: tuple  # per dim: the slice of x it reads (None: no tap reaches the phase)
    kernel: tuple  # per dim: (first offset, last offset + 1, step) of the sub-kernel, ascending k
    geometry: Geometry  # of its stride-1 convolution (None with crop None)


def _dim_phases(size, k, s, pad, dil, out):
    """Per output phase r of one dim: (out slice, x slice or None, (k0, k1, step), sub-kernel size,
    sub-dilation, (pad lo, pad hi), outputs)."""
    res = []
    for r in range(s):
        n_r = len(range(r, out, s))
        if n_r == 0:
            continue
        ks = [kk for kk in range(k) if (r + pad - kk * dil) % s == 0]
        if not ks:
            res.append((slice(r, None, s), None, None, 0, 1, (0, 0), n_r))
            continue
        m = len(ks)
        sub_dil = (ks[1] - ks[0]) * dil // s if m > 1 else 1
        base = (r + pad - ks[-1] * dil) // s  # the input offset of the largest k: the window's start
        lo = -base
        hi = n_r - 1 + (m - 1) * sub_dil + base - (size - 1)
        start, stop = max(0, -lo), size - max(0, -hi)
        if stop <= start:
            res.append((slice(r, None, s), None, None, 0, 1, (0, 0), n_r))
            continue
        res.append((slice(r, None, s), slice(start, stop), (ks[0], ks[-1] + 1, ks[1] - ks[0] if m > 1 else 1), m,
                    sub_dil, (max(0, lo), max(0, hi)), n_r))
    return res


def phases(d, x_shape, full, groups, stride, padding, dilation, out_size) -> list:
    """The phases of a transposed call (x_shape: (N, C, *in), full: (C, O/groups, *kernel))."""
    n, c = x_shape[0], x_shape[1]
    o = full[1] * groups
    per_dim = [_dim_phases(i, k, s, p, dl, q) for i, k, s, p, dl, q in
               zip(x_shape[2:], full[2:], stride, padding, dilation, out_size)]
    out = []
    for combo in itertools.product(*per_dim):
        outs = tuple(a[0] for a in combo)
        if any(a[1] is None for a in combo):
            out.append(Phase(outs, None, None, None))
            continue
        crop = tuple(a[1] for a in combo)
        pad = tuple(a[5] for a in combo)
        mode = "ignore" if any(lo or hi for lo, hi in pad) else "zeros"
        g = Geometry(d, n, c, o, groups, tuple(sl.stop - sl.start for sl in crop), tuple(a[3] for a in combo),
                     (1,) * d, tuple(a[4] for a in combo), pad, mode, tuple(a[6] for a in combo))
        out.append(Phase(outs, crop, tuple(a[2] for a in combo), g))
    return out


def _dim_segments(n_r: int, lo: int, hi: int, length: int, m: int, sub_dil: int) -> list:
    """One dim of a phase cut into output segments: the outputs whose windows leave the input at
    the low end, the interior, those past the high end. Each (a, b, crop start, crop stop, pad lo,
    pad hi): outputs [a, b) of the phase, the input slice of the phase's crop they read, and the
    padding left (0 inside)."""
    lo_cut = min(lo, n_r)
    cuts = [0, lo_cut, max(lo_cut, n_r - hi), n_r]
    span = (m - 1) * sub_dil
    out = []
    for a, b in zip(cuts, cuts[1:]):
        if b > a:
            first, last = a - lo, b - 1 + span - lo  # the windows' extent in the crop's coordinates
            out.append((a, b, max(0, first), min(length, last + 1), max(0, -first), max(0, last - (length - 1))))
    return out


def split_borders(phases_: list) -> list:
    """The phases with every "ignore" phase cut into its interior and border pieces (module doc)."""
    out = []
    for ph in phases_:
        g = ph.geometry
        if g is None or g.padding_mode != "ignore":
            out.append(ph)
            continue
        per_dim = [_dim_segments(g.out_size[i], *g.pad[i], g.in_size[i], g.kernel[i], g.dilation[i])
                   for i in range(g.dims)]
        for combo in itertools.product(*per_dim):
            outs = tuple(slice(sl.start + a * sl.step, sl.start + (b - 1) * sl.step + 1, sl.step)
                         for sl, (a, b, *_rest) in zip(ph.out, combo))
            if any(c1 <= c0 for _a, _b, c0, c1, _l, _h in combo):  # no real tap: the identity
                out.append(Phase(outs, None, None, None))
                continue
            crop = tuple(slice(sl.start + c0, sl.start + c1) for sl, (_a, _b, c0, c1, _l, _h) in zip(ph.crop, combo))
            pad = tuple((lo, hi) for *_x, lo, hi in combo)
            mode = "ignore" if any(lo or hi for lo, hi in pad) else "zeros"
            sub = dataclasses.replace(g, in_size=tuple(c1 - c0 for _a, _b, c0, c1, _l, _h in combo), pad=pad,
                                      padding_mode=mode, out_size=tuple(b - a for a, b, *_r in combo))
            out.append(Phase(outs, crop, ph.kernel, sub))
    return out


def forward_weights(v) -> dict:
    """The weights in the forward layout (O, C/groups, *kernel), unflipped."""
    c, og, kernel = v.full[0], v.full[1], v.full[2:]
    cg, o = c // v.groups, og * v.groups
    return {name: t.expand(v.full).reshape((v.groups, cg, og) + kernel).transpose(1, 2).reshape((o, cg) + kernel)
            for name, t in v.weights.items()}


def _sub_kernel(t, kernel):
    """The sub-kernel of the offsets (k0, k1, step) per dim, in ascending input offset (k descending)."""
    for i, (k0, k1, step) in enumerate(kernel):
        dim = 2 + i
        t = t.narrow(dim, k0, k1 - k0)
        if step > 1:
            t = t[(slice(None),) * dim + (slice(None, None, step),)]
        t = t.flip(dim)
    return t


def run(v, phases_, out_size, select) -> torch.Tensor:
    """y of the transposed call v (transpose._Args) from its phases (phases()), each run by
    `select(call)`'s backend."""
    x = v.x
    wf = forward_weights(v)
    o = v.full[1] * v.groups
    pieces = []
    for ph in phases_:
        if ph.geometry is None:
            pieces.append((ph.out, None))
            continue
        xs = x[(slice(None), slice(None)) + ph.crop]
        ws = {name: _sub_kernel(t, ph.kernel) for name, t in wf.items()}
        call = backends.Call(v.spec, v.reduce, ph.geometry, x.device, x.dtype)
        pieces.append((ph.out, calls.run_direct(select(call), xs, v.bias, ws, call, select)))
    dtype = next((p.dtype for _, p in pieces if p is not None), x.dtype)
    y = x.new_empty((x.shape[0], o) + tuple(out_size), dtype=dtype)
    for out, p in pieces:
        idx = (slice(None), slice(None)) + out
        if p is None:  # no tap reaches these outputs: the identity (mean: 0 / 0), then the bias
            rec = reductions.get(v.reduce)
            fill = math.nan if rec.backward == "count" else rec.identity
            view = y[idx]
            b = torch.full_like(view, fill)
            if v.bias is not None:
                b = b + v.bias.to(dtype).reshape((1, -1) + (1,) * v.d)
            y[idx] = b
        else:
            y[idx] = p
    return y
