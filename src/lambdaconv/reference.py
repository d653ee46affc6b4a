"""The float64 reference: the definition of what every backend computes, written to be read.

y[n, o, p] = REDUCE over (c in o's group, k in window) of op(x_pad[n, c, p*stride + k*dilation],
w[o, c, k]) + bias[o]. Built from plain torch ops on full broadcast tensors, so torch's autograd
gives the exact gradients. Padded taps under padding_mode="ignore" are never evaluated (not
evaluated and masked: a masked inf would still poison the gradient). Memory is
N x O x C/groups x K x P: for small shapes only (tests, debugging).

`reduce` may be a pair (inner, outer): OUTER over c of INNER over k (two-level, lambdaconv.terms).
`dtype` is float64 for the reference itself; backends/composite.py runs the same definition in
the compute dtype (float32 for float32 / half inputs), for second derivatives and torch.func.
"""
from __future__ import annotations

import torch

from .geometry import Geometry, pad_input, valid_taps, windows
from . import reductions
from .ir import OpSpec, evaluate


def reference_conv(x, spec: OpSpec, weights: dict, bias, g: Geometry, reduce: str,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The conv in `dtype` (differentiable w.r.t. x, every weight and bias)."""
    x = x.to(dtype)
    # weights arrive with rank dims + 2 (functional normalizes them), broadcastable to (O, Cg, *k)
    w = {k: v.to(dtype).expand((g.out_channels,) + tuple(v.shape[1:])) for k, v in weights.items()}
    d, K, P = g.dims, g.taps, g.positions
    cols = windows(pad_input(x, g), g)  # (N, C, *out, *k)
    cols = cols.reshape(g.batch, g.in_channels, P, K).transpose(2, 3)  # (N, C, K, P)
    valid = valid_taps(g, x.device) if g.padding_mode == "ignore" else \
        torch.ones(K, P, dtype=torch.bool, device=x.device)
    kk, pp = valid.nonzero(as_tuple=True)  # the (tap, position) pairs that are evaluated
    outs = []
    for gi in range(g.groups):
        cin = slice(gi * g.cin_per_group, (gi + 1) * g.cin_per_group)
        cout = slice(gi * g.cout_per_group, (gi + 1) * g.cout_per_group)
        xv = cols[:, cin][:, :, kk, pp][:, None]  # (N, 1, Cg, V)
        wv = {}
        for name, t in w.items():
            t = t[cout].broadcast_to((g.cout_per_group, g.cin_per_group) + g.kernel)
            wv[name] = t.reshape(g.cout_per_group, g.cin_per_group, K)[:, :, kk][None]  # (1, Og, Cg, V)
        vals = evaluate(spec.expr, xv, wv, dtype=dtype)
        vals = vals.expand(g.batch, g.cout_per_group, g.cin_per_group, kk.numel())
        ident = reductions.get(reduce[0] if isinstance(reduce, tuple) else reduce).identity  # at taps left out
        full = torch.full((g.batch, g.cout_per_group, g.cin_per_group, K, P), ident,
                          dtype=dtype, device=x.device)
        full = _scatter(full, vals, kk, pp)
        if isinstance(reduce, tuple):  # two-level (inner, outer): inner over each channel's taps, outer over channels
            inner, outer = (reductions.get(r) for r in reduce)
            taps = full.permute(0, 1, 4, 2, 3)  # (N, Og, P, Cg, K)
            per_c = inner.reference(taps, -1, valid.sum(0)[:, None])
            outs.append(outer.reference(per_c, -1, torch.tensor(g.cin_per_group, device=x.device)))
            continue
        taps = full.permute(0, 1, 4, 2, 3).reshape(g.batch, g.cout_per_group, P, g.cin_per_group * K)
        # max / min: torch's gradient goes to one selected tap, as documented
        outs.append(reductions.get(reduce).reference(taps, -1, valid.sum(0) * g.cin_per_group))
    y = torch.cat(outs, 1).reshape((g.batch, g.out_channels) + g.out_size)
    if bias is not None:
        y = y + bias.to(dtype).reshape((1, -1) + (1,) * d)
    return y


def _scatter(full, vals, kk, pp):
    # full[..., kk[i], pp[i]] = vals[..., i], differentiably.
    idx = (kk * full.shape[-1] + pp)
    flat = full.flatten(-2)
    flat = flat.index_copy(-1, idx, vals)
    return flat.unflatten(-1, full.shape[-2:])
