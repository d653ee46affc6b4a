"""The autograd Function of the triton backend: tensor layouts, launches, gradient assembly.

Semantics follow backends/tiled.py (and reference.py): compute in float32 for float32/16/bf16
inputs, output in the input dtype; reflect/replicate/circular padding is done by torch before the
kernel (and its gradient by torch's autograd after), zeros/ignore padding inside the kernel.

Host time: a small conv's kernels take less time than the Python around them, so everything that
is a function of the call's geometry (constexpr dicts, kernel modules, launch sizes) is computed
once per key (tuning.memo) and the per-call work is the tensors and the launches.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ... import notice, reductions, settings
from ...geometry import Geometry, pad_input, valid_taps
from ..composite import direct_backward
from . import gluon_bwd, kplan, tuning
from .kernels import kernels
from .pad import padded
from ...settings import interpreting

# fp16 only: triton 3.6 computes bf16 arithmetic in fp32 (a bf16 accumulator then fails to compile).
_IN_KERNEL_PAD = ("zeros", "ignore")
_BIAS_DIMS = {d: [0] + list(range(2, 2 + d)) for d in (1, 2, 3)}  # the bias gradient sums over these


def _as3(v: tuple, fill) -> tuple:
    return (fill,) * (3 - len(v)) + tuple(v)


def _consts(g: Geometry, in_kernel_pad: bool) -> dict:
    size = g.in_size if in_kernel_pad else g.padded_size
    pad = tuple(lo for lo, _ in g.pad) if in_kernel_pad else (0,) * g.dims
    names = ("D", "H", "W")
    i64, fold = tuning.index_flags(g)  # 64-bit indices / grids folded into x, from the sizes
    out = dict(C=g.in_channels, CG=g.cin_per_group, O=g.out_channels, OG=g.cout_per_group,
               IGNORE=g.padding_mode == "ignore", I64=i64, FOLD=fold)
    for prefix, vals, fill in (("I", size, 1), ("O", g.out_size, 1), ("K", g.kernel, 1), ("S", g.stride, 1),
                               ("D", g.dilation, 1), ("P", pad, 0)):
        for nm, v in zip(names, _as3(vals, fill)):
            out[prefix + nm] = v
    return out


_CONSTS: dict = {}


def consts(g: Geometry, in_kernel_pad: bool) -> dict:
    """Constexpr geometry of the kernels, as 3-d. Without in-kernel padding the input given to the
    kernel is already padded (torch), so its size is the padded size and the kernel pads nothing.
    Shared per (geometry, in_kernel_pad): read it or copy it (dict(k, ...)), never change it."""
    return tuning.memo(_CONSTS, (g, in_kernel_pad), lambda: _consts(g, in_kernel_pad))


def _w_full(w: torch.Tensor, g: Geometry) -> torch.Tensor:
    """(G, OG, CG, T) view of a weight broadcast to (O, CG, *kernel)."""
    full = (g.out_channels, g.cin_per_group) + g.kernel
    if w.shape != full:
        w = w.expand(full)
    return w.reshape(g.groups, g.cout_per_group, g.cin_per_group, g.taps)


# The kernels' weight layouts, as dims of (G, OG, CG, T): forward (G, CG*T, OG), input gradient
# (G, T, OG, CG); None: CG and T merged into one dim.
_FWD_LAYOUT = (0, None, 1)
_BWD_LAYOUT = (0, 3, 1, 2)


def _layout_view(g: Geometry, dims: tuple) -> tuple:
    """(sizes, strides) of a contiguous (O, CG, *kernel) weight seen as (G, OG, CG, T) permuted to dims."""
    G, OG, CG, T = g.groups, g.cout_per_group, g.cin_per_group, g.taps
    sizes, strides = (G, OG, CG, T, CG * T), (OG * CG * T, CG * T, T, 1, 1)
    pick = [4 if d is None else d for d in dims]
    return [sizes[i] for i in pick], [strides[i] for i in pick]


def _w_layout(w: torch.Tensor, g: Geometry, dims: tuple, view: tuple, full: tuple) -> torch.Tensor:
    """The weight broadcast to `full` (O, CG, *kernel), as (G, OG, CG, T) permuted to `dims`,
    contiguous. A contiguous full-size weight is read in that order through one strided view
    (`view`, _layout_view's): each view op costs about as much host time as the copy."""
    if w.is_contiguous() and w.shape == full:
        return w.as_strided(*view).contiguous()
    wf = _w_full(w, g)
    if None in dims:  # CG, T merged
        return wf.permute(0, 2, 3, 1).reshape(g.groups, -1, g.cout_per_group).contiguous()
    return wf.permute(dims).contiguous()


def _pow2(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, 1 << max(0, math.ceil(math.log2(max(1, v))))))


class _Plan(NamedTuple):
    """What a forward and its backward need that is a function of the call's key (see _plan)."""
    kernels: kplan.KernelPlan  # which kernel runs each pass
    mod: object  # the kernel module
    k: dict  # consts
    kw: dict  # the forward kernel's constexprs
    kw_key: tuple  # kw as a hashable key (the tuner's)
    k_key: tuple  # k as one (the backward's tuner)
    y_shape: tuple
    rows: int
    in_pad: bool  # zeros / ignore padding done in the kernels
    full: tuple  # the weights' broadcast shape (O, CG, *kernel)
    fwd_view: tuple  # _layout_view of the forward's weight layout
    bwd_view: tuple  # and of the input gradient's
    slab_view: tuple  # _slab_view


def _plan(spec, g: Geometry, reduce, need_x, need_w, interp, dtype, half_w, has_bias, device) -> _Plan:
    kp = kplan.decide(spec, g, reduce, need_x, need_w, interp, dtype, half_w, device)
    in_pad = g.padding_mode in _IN_KERNEL_PAD
    k = consts(g, in_pad)
    kw = dict(k, HAS_BIAS=has_bias, SAVE_AUX=kp.save_aux)
    return _Plan(kp, kernels(spec, reduce, need_x, need_w, interp, kp.compute), k, kw, tuple(sorted(kw.items())),
                 tuple(sorted(k.items())), (g.batch, g.out_channels) + g.out_size, g.batch * g.positions, in_pad,
                 (g.out_channels, g.cin_per_group) + g.kernel, _layout_view(g, _FWD_LAYOUT),
                 _layout_view(g, _BWD_LAYOUT), _slab_view(g))


_PLANS: dict = {}
settings.on_change(lambda: _PLANS.clear())  # the kernel plans read settings (the module's current dict)


class TritonConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, meta, *wts):
        """meta: (spec, geometry, reduce, weight names), one argument (each costs host time in apply)."""
        spec, g, reduce, names = meta
        if x.dtype == torch.float64:
            raise TypeError("the triton backend computes in float32; float64 runs on 'tiled'")
        needs = ctx.needs_input_grad
        need_x, need_w = needs[0], needs[3:]  # bools
        grad = need_x or True in need_w
        interp = interpreting()
        half_w = x.dtype in kplan.HALF and all(w.dtype == x.dtype for w in wts)
        has_bias = bias is not None
        dev = x.device
        key = ("fwd", spec, g, reduce, need_x, need_w, interp, x.dtype, half_w, has_bias, dev)
        p = tuning.memo(_PLANS, key, lambda: _plan(spec, g, reduce, need_x, need_w, interp, x.dtype, half_w, has_bias,
                                                    dev))
        kp = p.kernels
        save_aux = kp.save_aux
        mod, kw, y_shape, rows = p.mod, p.kw, p.y_shape, p.rows
        xp = None
        xk = (x if p.in_pad else pad_input(x, g)).contiguous()
        wf = [_w_layout(w, g, _FWD_LAYOUT, p.fwd_view, p.full) for w in wts]
        y = x.new_empty(y_shape)
        aux = None
        if save_aux:
            aux = x.new_empty(y_shape, dtype=torch.int32 if kp.saves == "winner" else torch.float32)
        if rows:
            args = (xk, *wf, bias if has_bias else y, y, aux if save_aux else y, rows)

            def portable():
                tuning.launch("fwd", mod._fwd, args, kw, x.device, rows, g.cout_per_group, g.groups, interp,
                              p.kw_key)

            ran = False
            # a first call compiles (and may tune): one line on stderr when that takes long
            with notice.first(("fwd", id(p)), lambda: _what("forward", spec, reduce, g, x.dtype)):
                if kp.forward == "gluon":
                    ran, xp = _gluon_forward(xk, g, spec, reduce, kp.gluon_compute, wf, bias, y, aux, rows,
                                             portable, p.in_pad)
                if not ran:
                    portable()
        if grad or needs[1]:  # the backward runs only if some input needs a gradient (the bias alone too)
            # the Gluon forward's padded input, for the weight gradient (one F.pad less per step)
            ctx.save_for_backward(x, aux, xp if True in need_w else None, *wts)
            ctx.meta = (meta, p, need_w, interp)
            ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, gy):
        x, aux, xp_saved, *wts = ctx.saved_tensors  # the weights as given: in-place changes raise
        (spec, g, reduce, names), p, need_w, interp = ctx.meta
        if torch.is_grad_enabled():  # create_graph=True: the kernels' gradients are not differentiable
            n = ctx.needs_input_grad
            gx, gb, gws = direct_backward(gy, x, wts, ctx.meta[0], (n[0], n[1], *n[3:]), ctx.bias_dtype)
            return (gx, gb, None, *gws)
        with notice.first(("bwd", id(p)), lambda: _what("backward", spec, reduce, g, x.dtype)):  # a first call compiles
            return TritonConv._backward(ctx, gy, x, aux, xp_saved, wts, spec, g, reduce, names, p, need_w, interp)

    @staticmethod
    def _backward(ctx, gy, x, aux, xp_saved, wts, spec, g, reduce, names, p, need_w, interp):
        mod, k, in_pad = p.mod, p.k, p.in_pad
        need_x = ctx.needs_input_grad[0]
        dev = x.device
        gy = gy.contiguous()
        if in_pad:  # the kernels pad: x as it is (this runs under no_grad: no detach needed)
            xk_c = x.contiguous()
        else:  # torch pads, and its autograd takes the gradient back through the padding
            xr = x.detach().requires_grad_(need_x)
            with torch.enable_grad():
                xk = pad_input(xr, g)
            xk_c = xk.detach().contiguous()
        gxk = None
        gws = {}
        kp = p.kernels
        kind = reductions.get(reduce).backward
        if kind == "select":
            # (O, CG*T): a contiguous full-size weight is that already
            full = p.full
            ws = [w if w.is_contiguous() and w.shape == full else _w_full(w, g).reshape(g.out_channels, -1).contiguous()
                  for w in wts]
            gxk = xk_c.new_zeros(xk_c.shape, dtype=torch.float32) if need_x else None
            # (O, CG*T) to the kernel, allocated as the gradient's (O, CG, *kernel): the same memory
            gw_bufs = [xk_c.new_zeros(full, dtype=torch.float32) for n in need_w if n]
            n_out = gy.numel()
            if n_out:
                block = 64 if interp else 256
                grid = (triton_cdiv(n_out, block),)
                mod._bwd_select[grid](xk_c, *ws, aux, gy, gxk if gxk is not None else gy, *gw_bufs, n_out,
                                      **k, BLOCK=block, num_warps=4)
            gws.update(zip((n for n, need in zip(names, need_w) if need), gw_bufs))
        else:
            gs = gy if gy.dtype == torch.float32 else gy.to(torch.float32)
            if kind == "count":
                if g.padding_mode == "ignore":
                    count = valid_taps(g, dev).sum(0).to(torch.float32) * g.cin_per_group  # (P,)
                    gs = gs / count.reshape(g.out_size)
                else:
                    gs = gs / float(g.cin_per_group * g.taps)
            gs = gs.contiguous()
            yb = aux if kind == "softmax" else gs
            wb = [_w_layout(w, g, _BWD_LAYOUT, p.bwd_view, p.full) for w in wts]
            fast, fast_w = kp.grad_x == "gluon", kp.grad_w == "gluon"  # the Gluon kernels (kplan.decide)
            fin = gluon_bwd.finite_flag(gs) if fast or fast_w else None  # one reduction for both kernels
            if need_x:
                gxk = x.new_empty(x.shape) if in_pad else xk_c.new_empty(xk_c.shape, dtype=torch.float32)
                rows = xk_c.numel() // g.in_channels
                if rows and not (fast and gluon_bwd.grad_x(spec, xk_c, wb, gs, gxk, k, rows, g.groups, fin)):
                    tuning.launch("bwd_x", mod._bwd_x, (xk_c, *wb, gs, yb, gxk, rows), k, dev, rows,
                                  g.cin_per_group, g.groups, interp, p.k_key)
            if True in need_w:
                slabs = None
                if fast_w:
                    xp = xp_saved if xp_saved is not None else padded(xk_c, g) if in_pad else xk_c
                    slabs = gluon_bwd.grad_w(spec, need_w, xp, wb, gs, consts(g, False), g.batch * g.positions,
                                             g.groups, tuning.sm_count(dev), fin)
                if slabs is not None:
                    gws.update(_slabs_to_grads(slabs, g, names, need_w, p.slab_view))
                else:
                    gws.update(_grad_weights(mod, xk_c, wb, gs, yb, g, k, names, need_w, interp, p.slab_view,
                                             kp.grad_w_portable == "outer"))
        gx = None
        if need_x:
            if in_pad:
                gx = gxk
            else:
                (gx,) = torch.autograd.grad(xk, xr, gxk if gxk.dtype == xk.dtype else gxk.to(xk.dtype))
            if gx.dtype != x.dtype:
                gx = gx.to(x.dtype)
        gb = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
            gb = (gy if gy.dtype == torch.float32 else gy.to(torch.float32)).sum(_BIAS_DIMS[g.dims])
            if gb.dtype != ctx.bias_dtype:
                gb = gb.to(ctx.bias_dtype)
        out = []
        for n, w, need in zip(names, wts, need_w):
            if need:
                gw = gws[n]
                if gw.shape != w.shape:
                    gw = gw.sum_to_size(w.shape)
                out.append(gw if gw.dtype == w.dtype else gw.to(w.dtype))
            else:
                out.append(None)
        return (gx, gb, None, *out)


def _gluon_forward(x, g: Geometry, spec, reduce, compute, wf, bias, y, aux, rows, portable, in_pad):
    """Forward through a Gluon kernel (or `portable` where the tuner finds it faster) when one
    applies: (True, the padded input it read, or None), or (False, None): run the portable one.
    x: contiguous; padded by torch already unless in_pad (zeros). The register kernel (gluon.py)
    reads a padded input (its loads then need no masks): pad.py's kernel pads x for it. The staged
    kernel (gluon_staged.py) masks its few loads per K step and reads x as it is.
    aux: max/min's winning taps (training), or None. kplan.decide chose this kernel and `compute`."""
    from . import gluon

    gmod = gluon.module(spec, reduce, compute)
    if gmod is None:
        return False, None
    rest = (*wf, bias if bias is not None else y, y, aux if aux is not None else y, rows)
    has_bias, save = bias is not None, aux is not None
    kw = tuning.memo(_PLANS, ("gluon", g, has_bias, save),
                     lambda: dict(consts(g, False), HAS_BIAS=has_bias, SAVE_AUX=save))
    pad_box = []

    def padded_args():  # the padded input, made once and only if a register-kernel config runs
        if not pad_box:
            pad_box.append(padded(x, g) if in_pad else x)
        return (pad_box[0],) + rest
    raw = None
    if in_pad:
        raw = ((x,) + rest, tuning.memo(_PLANS, ("gluon-raw", g, has_bias, save),
                                        lambda: dict(consts(g, True), HAS_BIAS=has_bias, SAVE_AUX=save)))
    gluon.forward(gmod, padded_args, kw, rows, g.cout_per_group, g.groups, g.cin_per_group, portable, raw)
    return True, (pad_box[0] if pad_box else None)


def _what(kind: str, spec, reduce, g: Geometry, dtype) -> str:
    return notice.call_text(f"the {kind} kernels", spec, reduce, g, dtype)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


class _GradW(NamedTuple):
    """Launch sizes of the portable weight-gradient kernels (see _grad_w_plan)."""
    outer: bool
    blocks: dict  # BLOCK_* and num_warps
    grid: tuple
    splits: int
    chunk: int
    rows: int


def _grad_w_plan(g: Geometry, outer: bool, interp: bool, sms: int) -> _GradW:
    G, T, OG, CG = g.groups, g.taps, g.cout_per_group, g.cin_per_group
    rows = g.batch * g.positions
    if outer:
        bo, bc = _pow2(OG, 1, 64), _pow2(CG, 1, 64)
        tiles = triton_cdiv(OG, bo) * triton_cdiv(CG, bc)
        step = 64  # rows per split at the least
        blocks = dict(BLOCK_O=bo, BLOCK_C=bc, num_warps=4 if bo * bc <= 1024 else 8)
    else:
        bm, bc = (64, _pow2(CG, 1, 16)) if interp else (128, _pow2(CG, 1, 32))
        tiles = OG * triton_cdiv(CG, bc)
        step = 8 * bm
        blocks = dict(BLOCK_M=bm, BLOCK_C=bc, num_warps=4)
    target = 4 * sms
    splits = max(1, min(triton_cdiv(target, tiles * G * T), triton_cdiv(rows, step) if rows else 1,
                        tuning.max_splits(G * T * OG * CG, tuning.index_flags(g)[0])))
    return _GradW(outer, blocks, (tiles, G * T, splits), splits, triton_cdiv(max(rows, 1), splits), rows)


def _grad_weights(mod, xk, wb, gs, yb, g: Geometry, k, names, need_w, interp, slab_view, outer: bool) -> dict:
    """Weight gradients: split the batch x positions reduction so that the grid fills the device.

    The outer-product kernel (_bwd_w) needs enough channels per group for its (out x in) tile; with
    few (depthwise) the row-vectorized one (_bwd_w_rows) is used. The interpreter also takes the
    row-vectorized one (its cost is per loop step) unless settings.triton_gw == "outer" (kplan.decide)."""
    sms = tuning.sm_count(xk.device)
    p = tuning.memo(_PLANS, ("gw", g, outer, interp, sms), lambda: _grad_w_plan(g, outer, interp, sms))
    shape = (p.splits, g.groups, g.taps, g.cout_per_group, g.cin_per_group)
    bufs = [xk.new_empty(shape, dtype=torch.float32) for n in need_w if n]
    if p.rows:
        kernel = mod._bwd_w if p.outer else mod._bwd_w_rows
        kernel[tuning.fold(p.grid, k["FOLD"])](xk, *wb, gs, yb, *bufs, p.rows, p.chunk, **k, **p.blocks)
    else:
        for b in bufs:
            b.zero_()
    return _slabs_to_grads(bufs, g, names, need_w, slab_view)


def _slab_view(g: Geometry) -> tuple:
    """(sizes, strides) reading one (G, T, OG, CG) slab as (G, OG, CG, *kernel); with one group
    G is dropped, and that is the gradient's (O, CG, *kernel) shape (a view, no copy)."""
    G, T, OG, CG = g.groups, g.taps, g.cout_per_group, g.cin_per_group
    taps, step = [], OG * CG
    for k in reversed(g.kernel):  # tap t is row-major over the kernel dims
        taps.insert(0, step)
        step *= k
    sizes, strides = (G, OG, CG) + g.kernel, (T * OG * CG, CG, 1, *taps)
    return (sizes[1:], strides[1:]) if G == 1 else (sizes, strides)


def _slabs_to_grads(bufs, g: Geometry, names, need_w, view) -> dict:
    """Sum the (SPLITS, G, T, OG, CG) slabs of each wanted weight into its (O, CG, *kernel) gradient:
    with one group a strided view of the sum (its strides matter: a broadcast weight's sum_to_size
    reduces in that order), else a copy. One slab is taken as it is, one kernel less per weight:
    the same values (its sum would only turn an exact -0.0, a product that underflowed, into +0.0)."""
    sizes, strides = view  # _slab_view's
    out, it = {}, iter(bufs)
    for n, need in zip(names, need_w):
        if need:
            b = next(it)
            gw = (b if b.shape[0] == 1 else b.sum(0)).as_strided(sizes, strides)
            out[n] = gw if g.groups == 1 else gw.contiguous().view((g.out_channels, g.cin_per_group) + g.kernel)
    return out
