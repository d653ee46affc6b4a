"""Transposed lambda convolutions: the adjoint placement of taps, with only real input values as taps.

    y[n, o, q] = REDUCE over (c in o's group, k, p) with q = p*stride - padding + k*dilation of
                 op(x[n, c, p], w[c, o_in_group, k]) + bias[o]

Computed as the equivalent stride-1 convolution over the zero-inserted input with the flipped
kernel, whose inserted zeros and padding are no taps (the "ignore" rule, Geometry.holes): an output
that no tap reaches holds the reduction's identity, and mean divides by the taps that reach it. For
the linear op with sum this is exactly F.conv_transposeNd. Gradients flow through the rearranging
torch ops into the backend's own. Separable ops with sum / mean (the plan says "decompose") run as
one native transposed convolution of the stacked terms (_native); the others on a direct backend:
one that takes inserted zeros as holes (Inductor and tiled on CPU, the reference), or, where a
backend earlier in "auto"'s order takes no holes (the triton kernels), as one stride-1 call per
output phase (transpose_phases.py), every tap real.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import backends, calls, reductions, transpose_phases
from .backends import registry
from .geometry import Geometry, _tuple, broadcast_shapes
from .ir import resolve_op, resolve_reduce, with_grad
from .plan import plan_for


def conv_transpose_nd(d, input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                      dilation=1, reduce=None, backend="auto", grad=None):
    try:
        v = _validate(d, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce, backend,
                      grad)
        if backend in ("auto", "decompose") and _native_applies(v):
            y = _native(v)
            return y[0] if v.unbatched else y
        if backend == "decompose":
            raise ValueError(f"backend 'decompose' cannot run this transposed convolution: "
                             f"{plan_for(v.spec, v.reduce).reason}")
        call, crop = _equivalent_call(v)
        b, phases = _route(v, backend, call)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err}{calls._context(op, input, weights)}") from None
    if phases is not None:
        y = transpose_phases.run(v, phases, call.geometry.out_size, lambda c: registry.select(backend, c))
    else:
        x, ws = _equivalent(v, crop)
        if calls.nothing_to_compute(call):
            y = calls.no_kernel(x, v.bias, ws, call)
        else:
            y = calls.run_direct(b, x, v.bias, ws, call, lambda c: registry.select(backend, c))
    return y[0] if v.unbatched else y


def _route(v: "_Args", backend: str, call):
    """(backend, phases): the zero-inserted call on a backend that takes holes (phases None), or
    the phases (transpose_phases) where a backend earlier under "auto" (or the one named) runs
    their stride-1 calls and not the holes (the triton kernels)."""
    try:
        b, why = registry.select(backend, call), None
    except ValueError as err:
        b, why = None, err
    # traced (torch.compile, export): the zero-inserted call, whose tiled route is plain torch ops
    # (the phases' triton Functions have no custom op for tracing through); meta and zero input
    # channels: no kernel runs
    if not calls.nothing_to_compute(call) and not torch.compiler.is_compiling():
        phases = transpose_phases.phases(v.d, tuple(v.x.shape), v.full, v.groups, v.stride, v.padding, v.dilation,
                                         call.geometry.out_size)
        first = next((ph.geometry for ph in phases if ph.geometry is not None), None)
        try:
            bp = first and registry.select(backend, backends.Call(v.spec, v.reduce, first, call.device, call.dtype))
        except ValueError:
            bp = None
        if bp and (b is None or (bp.priority is not None and b.priority is not None and bp.priority < b.priority)):
            if bp.name == "triton" and _gluon_takes_interiors(call):
                phases = transpose_phases.split_borders(phases)
            return bp, phases
    if b is None:
        raise why
    return b, None


def _gluon_takes_interiors(call) -> bool:
    """Whether the Gluon forward would run the phases' zero-padded calls (it takes no "ignore"
    padding): then each phase's border pieces run apart (transpose_phases.split_borders)."""
    from .backends.triton import kplan
    return (kplan.gluon_wanted(call.device) and "gluon" in reductions.get(call.reduce).code
            and call.geometry.cin_per_group >= 2)


class _Args(NamedTuple):
    d: int
    x: torch.Tensor  # batched
    spec: object
    reduce: str
    weights: dict  # name -> tensor reshaped to rank d + 2 (broadcastable to full)
    full: tuple  # (in_channels, out_channels / groups, *kernel)
    bias: object
    stride: tuple
    padding: tuple
    output_padding: tuple
    groups: int
    dilation: tuple
    unbatched: bool


def _validate(d, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce, backend,
              grad) -> _Args:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    spec = with_grad(resolve_op(op), grad)
    reduce = resolve_reduce(spec, reduce)
    registry.check_name(backend)
    if input.dim() not in (d + 1, d + 2):
        raise ValueError(f"conv_transpose{d}d expects a {d + 2}-D input (N, C, *spatial) or {d + 1}-D unbatched "
                         f"input, got a {input.dim()}-D input of shape {tuple(input.shape)}")
    unbatched = input.dim() == d + 1
    x = input[None] if unbatched else input
    calls.check_weight_names(spec, weights)
    for n in spec.weight_names:
        t = weights[n]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"weight {n!r} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"weight {n!r} has dtype {t.dtype}; weights must be floating point")
        if t.dim() > d + 2:
            raise ValueError(f"weight {n!r} has {t.dim()} dims; at most {d + 2} (in_channels, out_channels/groups, "
                             f"*kernel)")
    shapes = [(1,) * (d + 2 - weights[n].dim()) + tuple(weights[n].shape) for n in spec.weight_names]
    full = tuple(broadcast_shapes(*shapes))
    c, og, kernel = full[0], full[1], full[2:]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if x.shape[1] % groups or (c != 1 and c != x.shape[1]):
        raise ValueError(f"channels mismatch: the weights' broadcast shape {full} is (in_channels, "
                         f"out_channels/groups, *kernel) but the input has {x.shape[1]} channels (groups={groups})")
    c = x.shape[1]
    full = (c,) + tuple(full[1:])
    if 0 in kernel or og == 0:
        raise ValueError(f"the weights' broadcast shape {full} has a zero-size dim")
    s, p, op_, dl = (_tuple(v, d, name) for v, name in ((stride, "stride"), (padding, "padding"),
                                                      (output_padding, "output_padding"), (dilation, "dilation")))
    if min(s) < 1 or min(dl) < 1 or min(p) < 0 or min(op_) < 0:
        raise ValueError(f"stride and dilation must be positive, padding and output_padding non-negative; got "
                         f"stride={s}, padding={p}, output_padding={op_}, dilation={dl}")
    if any(o >= max(a, b) for o, a, b in zip(op_, s, dl)):
        raise ValueError(f"output_padding {op_} must be smaller than stride {s} or dilation {dl} (as in torch)")
    o = og * groups
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (o,):
            raise ValueError(f"bias must be a tensor of shape ({o},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    ws = {n: weights[n].reshape(sh) for n, sh in zip(spec.weight_names, shapes)}
    return _Args(d, x, spec, reduce, ws, full, bias, s, p, op_, groups, dl, unbatched)


def _equivalent_call(v: _Args):
    """(the Call of the equivalent stride-1 convolution over the zero-inserted input, the crop of
    that input): geometry only, no tensor is built."""
    d, x, full = v.d, v.x, v.full
    s, p, op_, dl = v.stride, v.padding, v.output_padding, v.dilation
    c, og, kernel = full[0], full[1], full[2:]
    # the zero-inserted input, padded by (k - 1) * dilation - padding (cropped where that is negative)
    n, in_size = x.shape[0], tuple(x.shape[2:])
    up = tuple((i - 1) * st + 1 for i, st in zip(in_size, s))
    pads, holes, crop = [], [], []
    for i, (k, st, pi, oi, di) in enumerate(zip(kernel, s, p, op_, dl)):
        lo = (k - 1) * di - pi
        hi = lo + oi
        a, b = max(0, -lo), up[i] - max(0, -hi)
        if b <= a:
            raise ValueError(f"padding {p} removes the whole input (size {in_size}, kernel {kernel})")
        crop.append(slice(a, b))
        pads.append((max(0, lo), max(0, hi)))
        holes.append((st, a))
    size = tuple(sl.stop - sl.start for sl in crop)
    out_size = tuple(u + lo + hi - di * (k - 1) for u, (lo, hi), k, di in zip(size, pads, kernel, dl))
    g = Geometry(d, n, c, og * v.groups, v.groups, size, kernel, (1,) * d, dl, tuple(pads), "ignore", out_size,
                 tuple(holes))
    return backends.Call(v.spec, v.reduce, g, x.device, x.dtype), tuple(crop)


def _equivalent(v: _Args, crop):
    """The equivalent convolution's tensors: (zero-inserted input, flipped forward-layout weights)."""
    x = v.x
    up = tuple((i - 1) * st + 1 for i, st in zip(x.shape[2:], v.stride))
    xu = x.new_zeros(tuple(x.shape[:2]) + up)
    xu[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in v.stride)] = x
    flip = tuple(range(2, v.d + 2))
    ws = {name: t.flip(flip) for name, t in transpose_phases.forward_weights(v).items()}
    return xu[(slice(None), slice(None)) + crop], ws


def explain_transpose(d, input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                      reduce=None, backend="auto", grad=None):
    """The Plan of a transposed call (as lambdaconv.explain gives it for a conv): validated as
    conv_transpose_nd validates it, with the backend that would run it, its kernels and, for a
    direct op, the cost of the equivalent stride-1 convolution's real taps. Nothing is computed."""
    import dataclasses
    import math
    from . import cost
    try:
        v = _validate(d, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce, backend,
                      grad)
        plan = plan_for(v.spec, v.reduce)
        if backend in ("auto", "decompose") and _native_applies(v):
            conv = f"conv_transpose{d}d"
            layout = ("(out_channels, in_channels/groups", "(in_channels, out_channels/groups")  # ConvTranspose's
            native = tuple(c.replace("convNd", conv, 1).replace(*layout) for c in plan.calls[:1])
            if any(gx == "1" for gx, _ in plan.terms) or reductions.get(v.reduce).backward == "count":
                native += (f"{conv} of ones: at the taps that reach each output, the weights-only term / their count",)
            return dataclasses.replace(plan, calls=native, backend="decompose",
                                       kernels=(f"kernels:   one native {conv} (inserted zeros and padding are no "
                                                f"taps: only real input values are multiplied)",))
        if backend == "decompose":
            raise ValueError(f"backend 'decompose' cannot run this transposed convolution: {plan.reason}")
        call, _ = _equivalent_call(v)
        b, phases = _route(v, backend, call)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err}{calls._context(op, input, weights)}") from None
    if phases is None:
        kernels = tuple(b.describe(call)) if b.describe is not None else ()
        kernels += ("transposed: the stride-1 convolution of the zero-inserted input with the flipped kernel; "
                    "inserted zeros and the padding are no taps",)
    else:
        first = next(ph.geometry for ph in phases if ph.geometry is not None)
        kernels = tuple(b.describe(backends.Call(v.spec, v.reduce, first, call.device, call.dtype))) \
            if b.describe is not None else ()
        runs = [ph.geometry for ph in phases if ph.geometry is not None]
        kernels += (f"transposed: {len(runs)} stride-1 convolutions of the real input values over the output "
                    f"phases (transpose_phases.py; {sum(gm.padding_mode == 'ignore' for gm in runs)} of them "
                    "under 'ignore' padding where their windows leave the input); the kernels above are the "
                    "first one's",)
    extra = {"backend": b.name, "kernels": kernels}
    if plan.strategy == "direct":  # the real taps: (input position, kernel offset) pairs landing in the output
        g = call.geometry
        reach = math.prod(sum(0 <= p * s - pd + k * dl < o for p in range(i) for k in range(kk))
                          for i, kk, s, pd, dl, o in zip(v.x.shape[2:], v.full[2:], v.stride, v.padding, v.dilation,
                                                         g.out_size))
        c = cost.estimate_counts(v.spec, g.batch * g.out_channels * g.cin_per_group * reach, v.x.numel(),
                                 g.batch * g.out_channels * g.positions, v.x.element_size(),
                                 sum(math.prod(w.shape) for w in v.weights.values()))
        extra["cost"] = c.lines()
    return dataclasses.replace(plan, **extra)


_NATIVE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _native_applies(v: _Args) -> bool:
    return not v.spec.grad and plan_for(v.spec, v.reduce).strategy == "decompose" and v.x.device.type != "meta" \
        and v.x.numel() > 0


def _native(v: _Args) -> torch.Tensor:
    """A separable op, sum_i g_i(x) h_i(w) + c(w), as one native transposed convolution of the stacked
    g_i(x) with the stacked h_i(w): it multiplies real input values only, so inserted zeros and the
    padding are no taps by construction. c(w) counts at the taps that reach each output: the
    transposed convolution of ones with its sum over the channels; mean divides by that tap count."""
    from .backends.decompose import _full, _lowering
    low = _lowering(v.spec)
    x, full, groups = v.x, v.full, v.groups
    c, og, kernel = full[0], full[1], full[2:]
    cg, t_n = c // groups, len(low.terms)
    ct = x.dtype if x.dtype in (torch.float64, torch.float32) else torch.float32
    xs = x.to(ct)
    gx = [xs if term.kind == "x" else term.g(xs, None) for term in low.terms]
    G = torch.stack([g.reshape((x.shape[0], groups, cg) + g.shape[2:]) for g in gx], 2)
    G = G.reshape((x.shape[0], groups * t_n * cg) + x.shape[2:])
    w = {n: t.to(ct) for n, t in v.weights.items()}
    hs = [_full(h(None, w), full, ct, x.device) for h in low.hs]
    H = torch.stack([h.reshape((groups, cg, og) + kernel) for h in hs], 1).reshape((groups * t_n * cg, og) + kernel)
    conv = _NATIVE[v.d]
    kw = dict(stride=v.stride, padding=v.padding, output_padding=v.output_padding, groups=groups, dilation=v.dilation)
    y = conv(G, H, None, **kw)
    ones = None
    if low.const is not None:  # sum over the group's channels of c(w), at every tap that reaches q
        cw = _full(low.const(None, w), full, ct, x.device) * low.const_scale
        cs = cw.reshape((groups, cg, og) + kernel).sum(1)  # (G, Og, *k)
        ones = x.new_ones((1, groups) + x.shape[2:], dtype=ct)
        y = y + conv(ones, cs, None, **kw)
    if reductions.get(v.reduce).backward == "count":  # mean: over the taps that reach q
        one = x.new_ones((1, 1) + x.shape[2:], dtype=ct)
        count = conv(one, x.new_ones((1, 1) + kernel, dtype=ct), None, **{**kw, "groups": 1}) * cg
        has = count > 0
        y = y * torch.where(has, 1.0 / count, 0.0) + torch.where(has, 0.0, float("nan"))
    if v.bias is not None:
        y = y + v.bias.to(ct).reshape((1, -1) + (1,) * v.d)
    return y.to(x.dtype)



def conv_transpose1d(input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     reduce=None, backend="auto", grad=None):
    """1-d transposed convolution whose per-tap operation is `op` (see conv_transpose2d)."""
    return conv_transpose_nd(1, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce,
                             backend, grad)


def conv_transpose2d(input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     reduce=None, backend="auto", grad=None):
    """2-d transposed convolution whose per-tap operation is `op`, argument order and output size as
    torch.nn.functional.conv_transpose2d; weights broadcast to (in_channels, out_channels/groups, kH, kW).

    y[n, o, q] = REDUCE over (c, k, p) with q = p*stride - padding + k*dilation of op(x[n, c, p], w[c, o, k])
    + bias[o]: only real input values are taps (no inserted zeros go through op); an output no tap
    reaches holds the reduction's identity; mean divides by the taps that reach it.

    >>> import torch, lambdaconv as lc
    >>> x = torch.randn(2, 4, 5, 5)
    >>> lc.conv_transpose2d(x, "adder", {"weight": torch.randn(4, 3, 3, 3)}, stride=2, padding=1).shape
    torch.Size([2, 3, 9, 9])
    """
    return conv_transpose_nd(2, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce,
                             backend, grad)


def conv_transpose3d(input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     reduce=None, backend="auto", grad=None):
    """3-d transposed convolution whose per-tap operation is `op` (see conv_transpose2d)."""
    return conv_transpose_nd(3, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce,
                             backend, grad)
