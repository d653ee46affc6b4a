"""The decompose backend's offset-type layers: y = conv(x, P) + bias + alpha * sum_taps(P*Q).

A*(x - B) = A*x - A*B lowers to one native conv of x with P = A plus a per-filter constant
alpha * sum(P*Q) (alpha = -1). Written as its own autograd Function (gradcheck-tested against the
general path's torch autograd) because every small weight-sized kernel around the conv costs
GPU and host time that the bar against nn.Conv2d counts: on CUDA the constant and all gradients
after the conv's are the two fixed triton kernels of triton/affine.py; elsewhere (CPU, no triton)
a baddbmm and two addcmuls.
"""
from __future__ import annotations

from collections import namedtuple

import torch

from .triton.tuning import env, interpreting  # no triton import: settings only

# AffineConv's fixed arguments, built once per call signature (one Function argument): the conv's,
# the constant's scale alpha, out_channels o, bwd = (bias sizes, stride, padding, dilation,
# output_padding) as the lists aten.convolution_backward takes, gshape = (O, 1, ..., 1).
AffineCfg = namedtuple("_AffineCfg", "conv stride padding dilation groups alpha o bwd gshape")


def affine_cfg(r, alpha: float, d: int) -> AffineCfg:
    o = r.full[0]
    pad = list(r.padding) if isinstance(r.padding, tuple) else [r.padding] * d
    return AffineCfg(r.conv, r.stride, r.padding, r.dilation, r.groups, alpha, o,
                      ([o], list(r.stride), pad, list(r.dilation), [0] * d), (o,) + (1,) * (d + 1))


class AffineConv(torch.autograd.Function):
    """y = conv(x, P) + bias + alpha * sum_taps(P*Q), the offset layer A*(x - B) (alpha = -1).

    Same math as the general path, fewer kernels (measured on an H100, each small weight-sized
    kernel costs ~2 us, 7% of this conv's fwd+bwd in bfloat16). The backward is the conv's own
    backward, then d constant / d (P*Q) = alpha * the bias gradient per filter. Fused (CUDA): the
    constant is one kernel and every gradient after the conv's another. Otherwise the constant and
    the bias are one baddbmm and each weight's gradient one addcmul (P's fused with the conv's
    weight gradient and, under autocast, with its cast back to float32)."""

    @staticmethod
    def run(x, P, Q, bias, k, dts):
        """(y, the tensors the backward needs); dts = (compute dtype, conv dtype, fused): fused runs
        the constant and the gradients after the conv's as the triton kernels of affine.py (CUDA)."""
        ct, cd, fused = dts
        o = k.o
        xc, Pc = (x if x.dtype == cd else x.to(cd)), (P if P.dtype == cd else P.to(cd))
        if fused:
            b = _affine().constant(P, Q, bias, k.alpha, cd)
            return k.conv(xc, Pc, b, k.stride, k.padding, k.dilation, k.groups), (xc, Pc, P, Q)
        Pt, Qt = (P if P.dtype == ct else P.to(ct)), (Q if Q.dtype == ct else Q.to(ct))
        if bias is None:
            b = torch.mul(torch.bmm(Pt.reshape(o, 1, -1), Qt.reshape(o, -1, 1)).view(o), k.alpha)
        else:  # bias + alpha * P.Q per filter: one kernel
            b = torch.baddbmm((bias if bias.dtype == ct else bias.to(ct)).view(o, 1, 1), Pt.reshape(o, 1, -1),
                              Qt.reshape(o, -1, 1), alpha=k.alpha).view(o)
        y = k.conv(xc, Pc, b if b.dtype == cd else b.to(cd), k.stride, k.padding, k.dilation, k.groups)
        return y, (xc, Pc, Pt, Qt)

    @staticmethod
    def forward(ctx, x, P, Q, bias, k, dts):
        y, saved = AffineConv.run(x, P, Q, bias, k, dts)
        ctx.save_for_backward(*saved)
        ct, fused = dts[0], dts[2]
        ctx.k, ctx.ct, ctx.fused = k, ct, fused
        xdt = x.dtype  # None: every dtype is the compute dtype, the backward casts nothing
        ctx.dtypes = (xdt, P.dtype, Q.dtype, None if bias is None else bias.dtype)
        if not fused and xdt == ct and dts[1] == ct and P.dtype == ct and Q.dtype == ct and (
                bias is None or bias.dtype == ct):
            ctx.dtypes = None
        return y

    @staticmethod
    def backward(ctx, gy):
        xc, Pc, Pt, Qt = ctx.saved_tensors
        k, ct = ctx.k, ctx.ct
        need = ctx.needs_input_grad
        bsz, stride, pad, dil, opad = k.bwd
        gx, gPc, gb = _CONV_BWD(gy, xc, Pc, bsz, stride, pad, dil, False, opad, k.groups, [need[0], need[1], True])
        if ctx.fused:  # every gradient after the conv's in one kernel, each in its input's dtype
            xdt, pdt, qdt, bdt = ctx.dtypes
            gP, gQ, gB = _affine().grads(gPc.contiguous() if need[1] else None, gb, Pt, Qt, k.alpha,
                                         (pdt if need[1] else None, qdt if need[2] else None,
                                          bdt if need[3] else None))
            return None if gx is None else _cast(gx, xdt), gP, gQ, gB, None, None
        gb = gb if gb.dtype == ct else gb.to(ct)
        # d constant / d (P*Q) = alpha * gb per filter, as addcmul's scalar `value` (no kernel of
        # its own): gP fused with the conv's weight gradient, gQ an addcmul onto a cached 0-d zero
        # (torch.mul has no scalar factor; a separate neg kernel cost ~2 us of GPU and host time)
        gbs = gb.view(k.gshape)
        gP = torch.addcmul(gPc, Qt, gbs, value=k.alpha) if need[1] else None
        gQ = None
        if need[2]:
            z = _zero(Pt)
            gQ = torch.mul(Pt, torch.mul(gbs, k.alpha)) if z is None else torch.addcmul(z, Pt, gbs, value=k.alpha)
        if ctx.dtypes is None:
            return gx, gP, gQ, gb if need[3] else None, None, None
        xdt, pdt, qdt, bdt = ctx.dtypes
        return (None if gx is None else _cast(gx, xdt), None if gP is None else _cast(gP, pdt),
                None if gQ is None else _cast(gQ, qdt), _cast(gb, bdt) if need[3] else None, None, None)


_AFFINE = []


def _affine():
    """backends/triton/affine.py, imported on first use (it imports triton)."""
    if not _AFFINE:
        from .triton import affine
        _AFFINE.append(affine)
    return _AFFINE[0]


def fused(x, P, Q, bias) -> bool:
    """Whether the triton kernels of triton/affine.py run this layer: CUDA, plain tensors (no fake or
    distributed subclass), contiguous weights, triton installed. LAMBDACONV_DECOMPOSE_FUSED: "1"
    (default), "0" (the torch ops), "interpret" (also CPU tensors under TRITON_INTERPRET=1: tests)."""
    mode = env("LAMBDACONV_DECOMPOSE_FUSED", "1")
    if mode == "0" or not (x.is_cuda or (mode == "interpret" and interpreting())):
        return False
    if type(x) not in _PLAIN or type(P) not in _PLAIN or type(Q) not in _PLAIN \
            or (bias is not None and type(bias) not in _PLAIN):
        return False
    if not (P.is_contiguous() and Q.is_contiguous()) or x.dtype == torch.float64:
        return False
    if not _HAVE_TRITON:
        from .triton import available
        _HAVE_TRITON.append(available())
    return _HAVE_TRITON[0]


_HAVE_TRITON: list = []
_PLAIN = (torch.Tensor, torch.nn.Parameter)  # not fake, functional or distributed tensors
_CONV_BWD = torch.ops.aten.convolution_backward.default
_ZEROS: dict = {}


def _zero(t: torch.Tensor):
    """A 0-d zero of t's dtype on t's device, made once (read only: addcmul's broadcast input);
    None for tensor subclasses (fake tensors while tracing, DTensor) and during CUDA-graph capture,
    where a tensor made outside does not belong."""
    if type(t) is not torch.Tensor or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
        return None
    key = (t.device, t.dtype)
    z = _ZEROS.get(key)
    if z is None:
        z = _ZEROS[key] = torch.zeros((), dtype=t.dtype, device=t.device)
    return z


def _cast(t: torch.Tensor, dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)  # a no-op .to() still costs a dispatch
