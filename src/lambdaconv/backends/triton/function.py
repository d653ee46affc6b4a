"""The autograd Function of the triton backend: tensor layouts, launches, gradient assembly.

Semantics follow backends/tiled.py (and reference.py): compute in float32 for float32/16/bf16
inputs, output in the input dtype; reflect/replicate/circular padding is done by torch before the
kernel (and its gradient by torch's autograd after), zeros/ignore padding inside the kernel.
"""
from __future__ import annotations

import math
import os

import torch

from ...geometry import Geometry, pad_input, valid_taps
from . import gluon_bwd, tuning
from .kernels import half_exact, kernels

# fp16 only: triton 3.6 computes bf16 arithmetic in fp32 (a bf16 accumulator then fails to compile).
_HALF = {torch.float16: "tl.float16"}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _as3(v: tuple, fill) -> tuple:
    return (fill,) * (3 - len(v)) + tuple(v)


def consts(g: Geometry, in_kernel_pad: bool) -> dict:
    """Constexpr geometry of the kernels, as 3-d. Without in-kernel padding the input given to the
    kernel is already padded (torch), so its size is the padded size and the kernel pads nothing."""
    size = g.in_size if in_kernel_pad else g.padded_size
    pad = tuple(lo for lo, _ in g.pad) if in_kernel_pad else (0,) * g.dims
    names = ("D", "H", "W")
    out = dict(C=g.in_channels, CG=g.cin_per_group, O=g.out_channels, OG=g.cout_per_group,
               IGNORE=g.padding_mode == "ignore")
    for prefix, vals, fill in (("I", size, 1), ("O", g.out_size, 1), ("K", g.kernel, 1), ("S", g.stride, 1),
                               ("D", g.dilation, 1), ("P", pad, 0)):
        for nm, v in zip(names, _as3(vals, fill)):
            out[prefix + nm] = v
    return out


def _w_full(w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """(G, OG, CG, T) view of a weight broadcast to (O, CG, *kernel)."""
    full = w.expand((g.out_channels, g.cin_per_group) + g.kernel)
    return full.reshape(g.groups, g.cout_per_group, g.cin_per_group, g.taps)


def _pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, 1 << max(0, math.ceil(math.log2(max(1, v))))))


class TritonConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, spec, g, reduce, names, *wts):
        if x.dtype == torch.float64:
            raise TypeError("the triton backend computes in float32; float64 runs on 'tiled'")
        in_pad = g.padding_mode in ("zeros", "ignore")
        xk = (x if in_pad else pad_input(x, g)).contiguous()
        k = consts(g, in_pad)
        need_x = ctx.needs_input_grad[0]
        need_w = tuple(bool(v) for v in ctx.needs_input_grad[6:])
        grad = need_x or any(need_w)
        compute = "tl.float32"
        # Inference only: rounding to half precision creates ties, and the winner of a tie among
        # rounded values need not be the true argmax that the gradient must go to.
        if not grad and x.dtype in _HALF and all(w.dtype == x.dtype for w in wts) and half_exact(spec, reduce):
            compute = _HALF[x.dtype]
        mod = kernels(spec, reduce, need_x, need_w, interpreting(), compute)
        wf = [_w_full(w, g).permute(0, 2, 3, 1).reshape(g.groups, -1, g.cout_per_group).contiguous()
              for w in wts]  # (G, CG*T, OG)
        N = g.batch
        y = torch.empty((N, g.out_channels) + g.out_size, dtype=x.dtype, device=x.device)
        save_aux = grad and reduce in ("max", "min", "logsumexp")
        aux = None
        if save_aux:
            aux = torch.empty(y.shape, dtype=torch.int32 if reduce != "logsumexp" else torch.float32,
                              device=x.device)
        rows = N * g.positions
        if rows:
            args = (xk, *wf, bias if bias is not None else y, y, aux if aux is not None else y, rows)
            kw = dict(k, HAS_BIAS=bias is not None, SAVE_AUX=save_aux)

            def portable():
                tuning.launch("fwd", mod._fwd, args, kw, x.device, rows, g.cout_per_group, g.groups)

            if save_aux or not _gluon_forward(x, g, spec, reduce, compute, wf, bias, y, rows, portable):
                portable()
        ctx.save_for_backward(x, aux, *wts)
        ctx.meta = (spec, g, reduce, names, need_w, mod, k, in_pad)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, aux, *wts = ctx.saved_tensors
        spec, g, reduce, names, need_w, mod, k, in_pad = ctx.meta
        need_x = ctx.needs_input_grad[0]
        dev, N = x.device, g.batch
        gy = gy.contiguous()
        xr = x.detach().requires_grad_(need_x and not in_pad)
        with torch.enable_grad():
            xk = xr if in_pad else pad_input(xr, g)
        xk_c = xk.detach().contiguous()
        gxk = None
        gws = {}
        if reduce in ("max", "min"):
            ws = [_w_full(w, g).reshape(g.out_channels, -1).contiguous() for w in wts]  # (O, CG*T)
            gxk = torch.zeros(xk_c.shape, dtype=torch.float32, device=dev) if need_x else None
            gw_bufs = [torch.zeros(g.out_channels, g.cin_per_group * g.taps, dtype=torch.float32, device=dev)
                       for n in need_w if n]
            n_out = gy.numel()
            if n_out:
                block = 64 if interpreting() else 256
                grid = (triton_cdiv(n_out, block),)
                mod._bwd_select[grid](xk_c, *ws, aux, gy, gxk if gxk is not None else gy, *gw_bufs, n_out,
                                      **k, BLOCK=block, num_warps=4)
            it = iter(gw_bufs)
            for n, need in zip(names, need_w):
                if need:
                    gws[n] = next(it).reshape((g.out_channels, g.cin_per_group) + g.kernel)
        else:
            gs = gy.to(torch.float32)
            if reduce == "mean":
                if g.padding_mode == "ignore":
                    count = valid_taps(g, dev).sum(0).to(torch.float32) * g.cin_per_group  # (P,)
                    gs = gs / count.reshape(g.out_size)
                else:
                    gs = gs / float(g.cin_per_group * g.taps)
            gs = gs.contiguous()
            yb = aux if reduce == "logsumexp" else gs
            wb = [_w_full(w, g).permute(0, 3, 1, 2).contiguous() for w in wts]  # (G, T, OG, CG)
            # Gluon backward kernels: opt-in (LAMBDACONV_GLUON_BWD=1); measured ~4% faster fwd+bwd (run 18):
            # the per-tap gradient arithmetic, not the portable kernels' barriers, is the limit
            fast = (reduce != "logsumexp" and g.padding_mode != "ignore" and gluon_wanted(dev)
                    and os.environ.get("LAMBDACONV_GLUON_BWD", "0") == "1")
            if need_x:
                gxk = torch.empty(xk_c.shape, dtype=x.dtype if in_pad else torch.float32, device=dev)
                rows = xk_c.numel() // g.in_channels
                if rows and not (fast and gluon_bwd.grad_x(spec, xk_c, wb, gs, gxk, k, rows, g.groups)):
                    tuning.launch("bwd_x", mod._bwd_x, (xk_c, *wb, gs, yb, gxk, rows), dict(k), dev, rows,
                                  g.cin_per_group, g.groups)
            if any(need_w):
                slabs = None
                if fast and g.batch * g.positions:
                    xp = pad_input(xk_c, g).contiguous() if in_pad else xk_c
                    slabs = gluon_bwd.grad_w(spec, need_w, xp, wb, gs, consts(g, False), g.batch * g.positions,
                                             g.groups, tuning.sm_count(dev))
                if slabs is not None:
                    gws.update(_slabs_to_grads(slabs, g, names, need_w))
                else:
                    gws.update(_grad_weights(mod, xk_c, wb, gs, yb, g, k, names, need_w, dev))
        gx = None
        if need_x:
            if in_pad:
                gx = gxk
            else:
                (gx,) = torch.autograd.grad(xk, xr, gxk.to(xk.dtype))
            gx = gx.to(x.dtype)
        gb = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
            gb = gy.to(torch.float32).sum([0] + list(range(2, 2 + g.dims))).to(ctx.bias_dtype)
        out = []
        for n, w, need in zip(names, wts, need_w):
            out.append(gws[n].sum_to_size(w.shape).to(w.dtype) if need else None)
        return (gx, gb, None, None, None, None, *out)


def gluon_wanted(device) -> bool:
    """The Gluon forward: CUDA sm_80 and newer, compiled (not interpreted), LAMBDACONV_GLUON != 0."""
    return (device.type == "cuda" and not interpreting() and os.environ.get("LAMBDACONV_GLUON", "1") != "0"
            and torch.cuda.get_device_capability(device) >= (8, 0))


def _gluon_forward(x, g: Geometry, spec, reduce, compute, wf, bias, y, rows, portable) -> bool:
    """Forward through the Gluon kernel (or `portable` where the tuner finds it faster) when it
    applies; False: run the portable one. The Gluon kernel takes the input padded by torch ("zeros"
    included: its loads then need no masks)."""
    if g.padding_mode == "ignore" or g.cin_per_group < 2 or not gluon_wanted(x.device):
        return False
    from . import gluon

    if x.dtype == torch.float16 and all(w.dtype == x.dtype for w in wf) and gluon.half_sum(spec, reduce):
        compute = "tl.float16"
    gmod = gluon.module(spec, reduce, compute)
    if gmod is None:
        return False
    xp = pad_input(x, g).contiguous()
    args = (xp, *wf, bias if bias is not None else y, y, rows)
    gluon.forward(gmod, args, dict(consts(g, False), HAS_BIAS=bias is not None), rows, g.cout_per_group, g.groups,
                  g.cin_per_group, portable)
    return True


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _grad_weights(mod, xk, wb, gs, yb, g: Geometry, k, names, need_w, dev) -> dict:
    """Weight gradients: split the batch x positions reduction so that the grid fills the device.

    The outer-product kernel (_bwd_w) needs enough channels per group for its (out x in) tile; with
    few (depthwise) the row-vectorized one (_bwd_w_rows) is used. The interpreter also takes the
    row-vectorized one (its cost is per loop step) unless LAMBDACONV_TRITON_GW=outer."""
    G, T, OG, CG = g.groups, g.taps, g.cout_per_group, g.cin_per_group
    rows = g.batch * g.positions
    forced = os.environ.get("LAMBDACONV_TRITON_GW")
    outer = forced == "outer" or (forced != "rows" and not interpreting() and OG * CG >= 256)
    if outer:
        bo, bc = _pow2(OG, 1, 64), _pow2(CG, 1, 64)
        tiles = triton_cdiv(OG, bo) * triton_cdiv(CG, bc)
        step = 64  # rows per split at the least
    else:
        bm, bc = (64, _pow2(CG, 1, 16)) if interpreting() else (128, _pow2(CG, 1, 32))
        tiles = OG * triton_cdiv(CG, bc)
        step = 8 * bm
    target = 4 * tuning.sm_count(dev)
    splits = max(1, min(triton_cdiv(target, tiles * G * T), triton_cdiv(rows, step) if rows else 1))
    chunk = triton_cdiv(max(rows, 1), splits)
    bufs = [torch.empty((splits, G, T, OG, CG), dtype=torch.float32, device=dev) for n in need_w if n]
    if rows:
        grid = (tiles, G * T, splits)
        if outer:
            mod._bwd_w[grid](xk, *wb, gs, yb, *bufs, rows, chunk, **k, BLOCK_O=bo, BLOCK_C=bc,
                             num_warps=4 if bo * bc <= 1024 else 8)
        else:
            mod._bwd_w_rows[grid](xk, *wb, gs, yb, *bufs, rows, chunk, **k, BLOCK_M=bm, BLOCK_C=bc,
                                  num_warps=4)
    else:
        for b in bufs:
            b.zero_()
    return _slabs_to_grads(bufs, g, names, need_w)


def _slabs_to_grads(bufs, g: Geometry, names, need_w) -> dict:
    """Sum the (SPLITS, G, T, OG, CG) slabs of each wanted weight into its (O, CG, *kernel) gradient."""
    out, it = {}, iter(bufs)
    for n, need in zip(names, need_w):
        if need:
            full = next(it).sum(0).permute(0, 2, 3, 1)  # (G, OG, CG, T)
            out[n] = full.reshape((g.out_channels, g.cin_per_group) + g.kernel)
    return out
