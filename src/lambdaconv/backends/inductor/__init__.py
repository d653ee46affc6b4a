"""The CPU direct path compiled by Inductor: the op evaluated inside fused, vectorized OpenMP loops.

The tiled path evaluates a tile of (O, M, C*K) taps with torch ops and reduces it; each op
materializes the tile. Here each pass is one Inductor-compiled loop nest (graphs.py) that keeps the
taps in registers: the forward reduces over a window's taps, the backward computes grad_x as a
gather over the flipped kernel and grad_w as a reduction over the batch and positions, in one
compiled graph. Memory is the tensors themselves (no taps intermediate). max/min backward goes
through the saved winners (tiled's O(outputs) index_add).

Compiled once per (op, reduction, geometry, dtype, gradients needed), kept in this process and in
Inductor's on-disk cache across processes (compile.py). "auto" takes this backend on CPU for calls
of at least settings.cpu_compile_min_taps taps (settings.cpu_compile: "1" every call, "0" never);
where Inductor cannot compile, it warns once and the tiled path runs.
"""
from __future__ import annotations

import warnings

import torch

from ... import reductions, settings
from ...notice import call_text
from ...geometry import Geometry, pad_input, real_positions, valid_taps, windows
from ..composite import compute_dtype, direct_backward
from ..registry import Backend, register
from ..tiled import TiledConv, _backward_select, _Ctx, finish_backward, save_and_finish
from . import compile as _compile
from .compile import Unavailable
from .graphs import Shapes, backward_fn, forward_fn


def _cl(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *S) -> (N, *S, C), contiguous."""
    return t.movedim(1, -1).contiguous()


def _w_cl(w: torch.Tensor, g: Geometry, ct) -> torch.Tensor:
    """A weight broadcast to (O, CG, *K), as (G, OG, *K, CG), contiguous."""
    full = (g.out_channels, g.cin_per_group) + g.kernel
    v = w.to(ct).expand(full).reshape((g.groups, g.cout_per_group, g.cin_per_group) + g.kernel)
    return v.movedim(2, -1).contiguous()


def _masked(g: Geometry) -> bool:
    """Some taps do not exist: "ignore" padding with a pad, or a transposed conv's holes."""
    return bool(g.holes) or (g.padding_mode == "ignore" and any(lo or hi for lo, hi in g.pad))


def _tap_mask(g: Geometry, device) -> torch.Tensor:
    """(*Sp) bool: the padded positions that hold a real input value."""
    return real_positions(g, device)[0, 0].bool().contiguous()


def _counts(g: Geometry, device, ct) -> torch.Tensor:
    """(*out) taps per output for "mean" under a mask: the existing taps x CG."""
    return (valid_taps(g, device).sum(0).to(ct) * g.cin_per_group).reshape(g.out_size).contiguous()


def _zero_insert(t_cl: torch.Tensor, s: Shapes) -> torch.Tensor:
    """(N, *out, O) -> (N, *T, O): t at (K - 1) * dil + q * stride per dim, zero elsewhere."""
    g = s.g
    z = t_cl.new_zeros((s.n,) + s.t + (s.o,))
    idx = (slice(None),) + tuple(slice((k - 1) * dl, (k - 1) * dl + (q - 1) * st + 1, st)
                                 for k, dl, q, st in zip(s.k, g.dilation, s.out, g.stride))
    z[idx] = t_cl
    return z


def _what(spec, reduce, g: Geometry, kind: str, dtype) -> str:
    return call_text(f"the {kind}", spec, reduce, g, dtype)


class InductorConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, spec, g, reduce, names, *wts):
        ct = compute_dtype(x.dtype)
        rec = reductions.get(reduce)
        s = Shapes(g)
        masked = _masked(g)
        needs = ctx.needs_input_grad
        need_x, need_w = needs[0], tuple(needs[6:])
        grad = need_x or True in need_w
        winner = grad and rec.backward == "select"
        xcl = _cl(pad_input(x.to(ct), g))
        wcl = [_w_cl(w, g, ct) for w in wts]
        args = [xcl] + wcl
        if masked:
            args.append(_tap_mask(g, x.device))
        count = None
        if rec.backward == "count":
            if masked:
                args.append(_counts(g, x.device, ct))
            else:
                count = float(g.cin_per_group * g.taps)
        key = ("fwd", spec.expr, reduce, g, ct, winner, names)
        fwd = _compile.compiled(key, forward_fn(spec, rec, s, names, masked, count, winner), args,
                                _what(spec, reduce, g, "forward", ct), taps=g.taps)
        bwd = None
        if grad and rec.backward != "select":  # compiled now: a failure falls back before anything ran
            bwd = _backward_graph(spec, rec, s, g, names, masked, need_x, need_w, ct, x.device, xcl, wcl)
        out = fwd(*args)
        y, arg = out[0], (out[1] if winner else None)
        ctx.bwd = bwd
        return save_and_finish(ctx, x, y, arg, wts, bias, (spec, g, reduce, names), rec, ct)

    @staticmethod
    def backward(ctx, gy):
        x, y, arg, *wts = ctx.saved_tensors
        spec, g, reduce, names = ctx.meta
        n = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: gradients that are differentiable again
            gx, gb, gws = direct_backward(gy, x, wts, ctx.meta, (n[0], n[1], *n[6:]), ctx.bias_dtype)
            return (gx, gb, None, None, None, None, *gws)
        ct = compute_dtype(x.dtype)
        rec = reductions.get(reduce)
        gy = gy.to(ct)
        xr = x.detach().to(ct).requires_grad_(n[0])
        with torch.enable_grad():
            xp = pad_input(xr, g)
        if rec.backward == "select":  # the winners' gradients: O(outputs) gathers and index_adds
            c = _Ctx(spec, g, reduce, names, wts, x.device, ct)
            gxp = torch.zeros(xp.shape, dtype=ct, device=x.device)
            gw = {nm: torch.zeros(w.shape, dtype=w.dtype, device=w.device) for nm, w in c.w.items()}
            _backward_select(c, windows(xp.detach(), g), gxp, gw, gy, arg)
        else:
            gxp, gw = _dense_backward(ctx, spec, rec, g, names, xp.detach(), wts, gy, y, ct)
        gx, gb, gws = finish_backward(ctx, x, xr, xp, gxp, gw, gy, g, names, wts, n[6:])
        return (gx, gb, None, None, None, None, *gws)


def _backward_graph(spec, rec, s, g, names, masked, need_x, need_w, ct, device, xcl, wcl):
    """The compiled backward (grad_x and the weights' gradients in one graph), and its inputs' layout."""
    per_out, per_t = xcl.new_empty((s.n,) + s.out + (s.o,)), xcl.new_empty((s.n,) + s.t + (s.o,))
    ex = [xcl, *wcl, *wcl, per_out, per_t, torch.empty(s.t, dtype=torch.bool, device=device)]  # flips: wcl's shapes
    if masked:
        ex.append(torch.empty(s.sp, dtype=torch.bool, device=device))
    if rec.backward == "softmax":
        ex += [per_out, per_t]  # y and its zero-inserted copy
    key = ("bwd", spec.expr, spec.grad, rec.name, g, ct, need_x, need_w, names)
    return _compile.compiled(key, backward_fn(spec, rec, s, names, masked, need_x, need_w), ex,
                             _what(spec, rec.name, g, "backward", ct), taps=g.taps)


def _dense_backward(ctx, spec, rec, g, names, xp, wts, gy, y, ct):
    """sum / mean / logsumexp: the compiled backward. (grad of the padded input, {name: grad})."""
    s = Shapes(g)
    masked = _masked(g)
    need_x, need_w = ctx.needs_input_grad[0], tuple(ctx.needs_input_grad[6:])
    xcl = _cl(xp)
    wcl = [_w_cl(w, g, ct) for w in wts]
    bwd = ctx.bwd or _backward_graph(spec, rec, s, g, names, masked, need_x, need_w, ct, xp.device, xcl, wcl)
    if rec.backward == "count":
        gy = gy / (_counts(g, gy.device, ct) if masked else float(g.cin_per_group * g.taps))
    gyc = _cl(gy)
    ones = torch.ones((s.n,) + s.out + (1,), dtype=torch.bool, device=xp.device)
    mz = _zero_insert(ones, s)[0, ..., 0].contiguous()
    args = [xcl, *wcl, *(w.flip(list(range(2, 2 + g.dims))).contiguous() for w in wcl), gyc, _zero_insert(gyc, s), mz]
    if masked:
        args.append(_tap_mask(g, xp.device))
    if rec.backward == "softmax":
        ycl = _cl(y)
        args += [ycl, _zero_insert(ycl, s)]
    out = iter(bwd(*args))
    gxp = next(out) if need_x else None
    gw = {nm: (next(out) if nd else None) for nm, nd in zip(names, need_w)}
    return gxp, gw


_warned: list = []


def _run(x, bias, weights, call):
    names = tuple(weights)
    try:
        return InductorConv.apply(x, bias, call.spec, call.geometry, call.reduce, names, *weights.values())
    except Unavailable as err:
        if str(err) not in _warned:  # once per reason
            _warned.append(str(err))
            warnings.warn(f"lambdaconv: Inductor cannot compile ({err}); this runs on the tiled path (slower)",
                          RuntimeWarning, stacklevel=3)
        return TiledConv.apply(x, bias, call.spec, call.geometry, call.reduce, names, *weights.values())


def _unsupported(call):
    if call.device.type != "cpu":
        return "runs on CPU tensors only (CUDA direct ops run on the triton backend)"
    why = _compile.failed()
    if why:
        return f"Inductor could not compile here: {why}"
    return None


def _passes_over(call):
    mode = settings.get().cpu_compile
    if mode == "0":
        return "settings.cpu_compile is '0'"
    g = call.geometry
    taps = g.batch * g.out_channels * g.positions * g.cin_per_group * g.taps
    if mode != "1" and taps < settings.get().cpu_compile_min_taps:
        return (f"{taps} taps: below settings.cpu_compile_min_taps ({settings.get().cpu_compile_min_taps}), "
                f"where a compile costs more than it saves")
    return None


def _describe(call):
    return ("kernels:   Inductor-compiled C++ loops (OpenMP, vectorized over in-channels): the forward as one fused "
            "reduction; grad x (a gather over the flipped kernel) and grad w in one compiled backward; "
            "max/min's backward through the saved winners. Compiled once per op and shape, cached on disk",)


register(Backend("inductor", _unsupported, _run, 60,
                 "direct on CPU: the op fused into Inductor-compiled loops, no taps intermediate",
                 describe=_describe, passes_over=_passes_over))
