"""The "decompose" backend: a separable op with reduce sum / mean run as ONE native convolution.

When the plan (plan.py, from ir.sympy_bridge) writes the op as op(x, w) = sum_i g_i(x) h_i(w) + c(w):

    y[n, o, p] = sum_{c, k} op(x_pad[n, c, p + k], w[o, c, k]) + bias[o]
               = convNd(stack_i g_i(x_pad), stack_i h_i(w))[n, o, p] + sum_{c, k} c(w)[o, c, k] + bias[o]

so the whole layer is one cuDNN / oneDNN call on T = len(terms) times the input channels, plus
small reductions over the weights. Exact at the borders:
  zeros     a padded tap reads x = 0 and contributes g_i(0) h_i: when every g_i(0) = 0 the native
            conv's zero padding is that; otherwise x is padded first and g_i applied after.
  reflect / replicate / circular: x is padded first, g_i applied to the padded x.
  ignore    g_i(x) is zero-padded (padded taps contribute nothing); c(w) counts only at valid taps,
            so it is a convolution of the validity mask with sum_c c(w)[o, c, k]; mean divides by
            the valid-tap count (the mask convolved with ones) instead of Cg*K.
Gradients are torch autograd's, through these calls.

Exact means algebraically equal, term for term, for finite values; NaN anywhere in x or the
weights still reaches every output it touches. Infinities can differ from the reference where the
rewrite splits one term into several: -(x-W)**2 at x = inf is -inf directly but -inf + inf = NaN
once expanded; and under "ignore" a non-finite weight at a tap that falls on the padding meets the
conv's zero (0 * inf = NaN) where the reference skips that tap.

Precision: g_i and h_i are computed in float32 for half / bfloat16 inputs (float64 stays float64)
and rounded once to the conv dtype, so a term like sin(2*x) is not rounded at every step. The
conv runs in the input dtype; under autocast in the autocast dtype, as nn.Conv2d does (then the
output has that dtype, as nn.Conv2d's has).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..geometry import Geometry, pad_input
from ..ir import OpSpec, topo_order
from ..ir.ops import OPS
from ..ir.sympy_bridge import separate, value_at_zero
from ..plan import plan_for
from .registry import Backend, register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
       "pow": operator.pow, "neg": operator.neg}


def _compile(e):
    """(x, weights) -> value of e in torch ops, like ir.evaluate, with constants as Python floats:
    no tensor is created per call (on CUDA each would be a host-to-device copy) and a Python scalar
    never promotes the tensor it meets. Returns a float when e is a constant."""
    order = [n for n in topo_order(e)]

    def run(x, w):
        memo = {}
        for n in order:
            if n.op == "input":
                v = x
            elif n.op == "weight":
                v = w[n.value]
            elif n.op == "const":
                v = n.value
            else:
                a = [memo[c] for c in n.args]
                if n.op in _PY:
                    v = _PY[n.op](*a)
                else:  # constant arguments of non-arithmetic ops (maximum(x, 0), where) as tensors
                    like = next(t for t in a if isinstance(t, torch.Tensor))
                    v = OPS[n.op].torch(*(t if isinstance(t, torch.Tensor) else torch.full((), t, dtype=like.dtype,
                                                                                          device=like.device)
                                          for t in a))
            memo[n] = v
        return memo[e]

    run.single = sum(n.op not in ("input", "weight", "const") for n in order) <= 1  # one rounding at most
    return run


@dataclass(frozen=True)
class _Lowering:
    gs: tuple  # compiled g_i(x)
    hs: tuple  # compiled h_i(w)
    const: object  # compiled c(w) without its numeric factor, or None
    const_scale: float  # c(w) = const_scale * const(w)
    zero_safe: bool  # every g_i(0) == 0: zero padding commutes with g


@lru_cache(maxsize=256)
def _lowering(spec: OpSpec) -> _Lowering:
    sep = separate(spec.expr)  # cached: the same analysis the plan made
    c, scale = sep.const, 1.0
    if c is not None and c.op == "neg":  # -(A*B): the sign goes into the bias update, not a kernel
        c, scale = c.args[0], -1.0
    if c is not None and c.op == "mul" and c.args[0].is_const:
        c, scale = c.args[1], scale * c.args[0].value
    return _Lowering(tuple(_compile(g) for g, _ in sep.terms), tuple(_compile(h) for _, h in sep.terms),
                     None if c is None else _compile(c), scale,
                     all(value_at_zero(g) == 0.0 for g, _ in sep.terms))


def _unsupported(call):
    plan = plan_for(call.spec, call.reduce)
    if plan.strategy != "decompose":
        return f"the plan is direct: {plan.reason}"
    return None


def _dtypes(x: torch.Tensor):
    """(compute dtype for g_i, h_i and constants; dtype the native conv runs in)."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    cd = x.dtype
    if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        cd = torch.get_autocast_dtype(x.device.type)  # what autocast would cast the conv's inputs to
    return ct, cd


def _as_full(v, full: tuple, dtype, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(dtype).expand(full)
    return torch.full((), v, dtype=dtype, device=device).expand(full)


def _run(x, bias, weights, call):
    g: Geometry = call.geometry
    low = _lowering(call.spec)
    ct, cd = _dtypes(x)
    d, T = g.dims, len(low.gs)
    full = (g.out_channels, g.cin_per_group) + g.kernel
    padded = any(lo or hi for lo, hi in g.pad)
    symmetric = all(lo == hi for lo, hi in g.pad)
    ignore = g.padding_mode == "ignore" and padded
    # Where the zero padding goes: the native conv pads g_i(x) when that equals g_i(padded x).
    native = padded and symmetric and (ignore or (g.padding_mode == "zeros" and low.zero_safe))
    pre = padded and not native and not ignore  # pad x, then g (reflect, replicate, circular, zeros)
    post = ignore and not native  # asymmetric "ignore": pad g_i(x) with zeros explicitly

    xin = pad_input(x, g) if pre else x
    gx = []
    for fn in low.gs:
        src = xin if (xin.dtype == ct or fn.single) else xin.to(ct)
        gx.append(fn(src, None).to(cd))
    if T == 1:
        G = gx[0]
    elif g.groups == 1:
        G = torch.cat(gx, 1)
    else:  # per group: [g_1 of the group's channels, g_2 of them, ...], matching H's layout
        G = torch.stack([t.unflatten(1, (g.groups, g.cin_per_group)) for t in gx], 2).flatten(1, 3)
    if post:
        G = F.pad(G, [v for lh in reversed(g.pad) for v in lh])

    w = {n: t.to(ct) for n, t in weights.items()}
    mean_scale = 1.0 / (g.cin_per_group * g.taps) if call.reduce == "mean" and not ignore else 1.0
    hs = [_as_full(fn(None, w), full, ct, x.device) for fn in low.hs]
    if mean_scale != 1.0:
        hs = [h * mean_scale for h in hs]
    H = (hs[0] if T == 1 else torch.stack(hs, 1).flatten(1, 2)).to(cd)

    mask = _mask(g, x.device, ct) if ignore else None
    b = None if bias is None else bias.to(ct)
    cmap = None
    if low.const is not None:
        cw = _as_full(low.const(None, w), full, ct, x.device)
        alpha = low.const_scale * mean_scale
        if ignore:  # constant at valid taps only: the mask convolved with the per-tap constant
            per_tap = cw.sum(1, keepdim=True) * low.const_scale
            with _autocast_off(x):  # tap counts and constants: never in bfloat16
                cmap = _CONV[d](mask, per_tap, None, g.stride, 0, g.dilation)
        else:
            s = cw.sum(tuple(range(1, d + 2)))
            b = torch.mul(s, alpha) if b is None else torch.add(b, s, alpha=alpha)
    if ignore and call.reduce == "mean":
        bias_after, b = b, None  # mean over valid taps: the bias is added after the division
    y = _CONV[d](G, H, None if b is None else b.to(cd), g.stride, [lo for lo, _ in g.pad] if native else 0,
                 g.dilation, g.groups)
    if ignore:
        out = y.dtype
        if cmap is not None:
            y = y + cmap
        if call.reduce == "mean":
            with _autocast_off(x):
                count = _CONV[d](mask, torch.ones((1, 1) + g.kernel, dtype=ct, device=x.device), None, g.stride,
                                 0, g.dilation) * g.cin_per_group
            # A window with no valid tap is a mean of nothing: NaN, as in the reference, but only
            # in the value: 1/0 in the gradient would turn the weights' gradient into NaN too.
            has = count > 0
            y = y * torch.where(has, 1.0 / count, 0.0) + torch.where(has, 0.0, float("nan"))
            if bias_after is not None:
                y = y + bias_after.reshape((1, -1) + (1,) * d)
        y = y.to(out)
    return y


def _autocast_off(x):
    return torch.autocast(x.device.type, enabled=False)


def _mask(g: Geometry, device, dtype) -> torch.Tensor:
    """(1, 1, *padded) validity mask: 1 on the real input, 0 on the padding."""
    ones = torch.ones((1, 1) + g.in_size, dtype=dtype, device=device)
    return F.pad(ones, [v for lh in reversed(g.pad) for v in lh])


register(Backend("decompose", _unsupported, _run, 10,
                 "separable ops with reduce sum/mean as one native convolution (cuDNN / oneDNN)"))
