"""A float64 definition of terms, post and two-level reductions, written apart from lambdaconv's
code paths: patches by F.unfold (1-d as 2-d with a unit height, 3-d as F.unfold per depth tap),
the per-tap values by plain torch callables on broadcast tensors, each reduction by its torch
function, padded taps under padding_mode="ignore" replaced by the reduction's identity."""
import math

import torch
import torch.nn.functional as F

# what each reduction of the registry means, written out (a reduction added to the registry needs a line)
REDUCE = {
    "sum": (0.0, lambda t, dim, n: t.sum(dim)),
    "mean": (0.0, lambda t, dim, n: t.sum(dim) / n),
    "max": (-math.inf, lambda t, dim, n: t.max(dim).values),
    "min": (math.inf, lambda t, dim, n: t.min(dim).values),
    "logsumexp": (-math.inf, lambda t, dim, n: torch.logsumexp(t, dim)),
}


def _tuple(v, d):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * d


def patches(xp, kernel, stride, dilation):
    """(N, C, K, L) patches of an already padded input, K = prod(kernel), L = output positions."""
    d = xp.dim() - 2
    n, c = xp.shape[:2]
    if d == 1:
        cols = F.unfold(xp[:, :, None], (1, kernel[0]), dilation=(1, dilation[0]), stride=(1, stride[0]))
        return cols.reshape(n, c, kernel[0], -1)
    if d == 2:
        return F.unfold(xp, kernel, dilation=dilation, stride=stride).reshape(n, c, math.prod(kernel), -1)
    depth = (xp.shape[2] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    per_k = []
    for kd in range(kernel[0]):  # (N, C, Khw, Lhw) per output depth, stacked as (N, C, kd, Khw, od, Lhw)
        per_k.append(torch.stack([patches(xp[:, :, od * stride[0] + kd * dilation[0]], kernel[1:], stride[1:],
                                          dilation[1:]) for od in range(depth)], -2))
    t = torch.stack(per_k, 2)  # (N, C, kd, Khw, od, Lhw)
    return t.reshape(n, c, math.prod(kernel), -1)


def out_size(size, kernel, stride, pad, dilation):
    return tuple((s + lo + hi - dl * (k - 1) - 1) // st + 1 for s, k, st, (lo, hi), dl in
                 zip(size, kernel, stride, pad, dilation))


def pads(padding, kernel, dilation, d):
    if padding == "same":
        return tuple((dl * (k - 1) // 2, dl * (k - 1) - dl * (k - 1) // 2) for k, dl in zip(kernel, dilation))
    return tuple((p, p) for p in _tuple(padding, d))


def definition(x, weights, terms, reduce, post, post_weights=(), bias=None, stride=1, padding=0, dilation=1,
               groups=1, padding_mode="zeros"):
    """terms: name -> callable(x, **weights) on broadcast tensors; reduce: name -> str or (inner, outer);
    post: callable(**terms, **post weights) or None (one term). Weights broadcast to (O, C/groups, *k),
    post weights to (O,). Returns y (N, O, *out) in float64, differentiable."""
    d = x.dim() - 2
    tw = {k: v for k, v in weights.items() if k not in post_weights}
    full = torch.broadcast_shapes(*(v.shape for v in tw.values()))
    o, kernel = full[0], tuple(full[2:])
    n, c = x.shape[:2]
    cg, og = c // groups, o // groups
    stride, dilation = _tuple(stride, d), _tuple(dilation, d)
    pad = pads(padding, kernel, dilation, d)
    flat = [v for lh in reversed(pad) for v in lh]
    mode = "constant" if padding_mode in ("zeros", "ignore") else padding_mode
    xp = F.pad(x, flat, mode=mode) if any(flat) else x
    cols = patches(xp, kernel, stride, dilation)  # (N, C, K, L)
    ones = F.pad(torch.ones_like(x[:1, :1]), flat) if any(flat) else torch.ones_like(x[:1, :1])
    valid = patches(ones, kernel, stride, dilation)[0, 0] > 0 if padding_mode == "ignore" else \
        torch.ones(cols.shape[2:], dtype=torch.bool)
    K, L = cols.shape[2:]
    xv = cols.reshape(n, groups, 1, cg, K, L)
    wv = {k: v.expand((o, cg) + kernel).reshape(groups, og, cg, K, 1) for k, v in tw.items()}
    vals = {}
    for name, fn in terms.items():
        v = fn(xv, **{k: wv[k] for k in fn.__code__.co_varnames[1:fn.__code__.co_argcount]})
        v = torch.as_tensor(v, dtype=torch.float64).expand(n, groups, og, cg, K, L)
        r = reduce[name] if isinstance(reduce, dict) else reduce
        if isinstance(r, str):
            ident, red = REDUCE[r]
            v = torch.where(valid, v, ident).reshape(n, groups, og, cg * K, L)
            vals[name] = red(v, 3, valid.sum(0) * cg)
        else:
            (ident, inner), (_, outer) = REDUCE[r[0]], REDUCE[r[1]]
            per_c = inner(torch.where(valid, v, ident), 4, valid.sum(0))  # (N, G, Og, Cg, L)
            vals[name] = outer(per_c, 3, cg)
    env = dict(vals)
    for k in post_weights:
        env[k] = weights[k].reshape(-1, 1).expand(o, 1).reshape(groups, og, 1) if weights[k].numel() > 1 \
            else weights[k].reshape(1, 1, 1)
    y = post(**env) if post is not None else vals[next(iter(vals))]
    y = y.expand(n, groups, og, L).reshape((n, o) + out_size(x.shape[2:], kernel, stride, pad, dilation))
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * d)
