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
Gradients are torch autograd's through these calls, except in one autograd Function that writes
the same chain rule with fewer kernels (_Stack below; gradcheck-tested). Under torch.compile it is
skipped for plain aten ops, and without a graph to record (inference) it is called as a plain
function.

Exact means algebraically equal, term for term, for finite values; NaN anywhere in x or the
weights still reaches every output it touches. Infinities can differ from the reference where the
rewrite splits one term into several: -(x-W)**2 at x = inf is -inf directly but -inf + inf = NaN
once expanded; and under "ignore" a non-finite weight at a tap that falls on the padding meets the
conv's zero (0 * inf = NaN) where the reference skips that tap.

Precision: g_i and h_i are computed in float32 for half / bfloat16 inputs (float64 stays float64)
and rounded once to the conv dtype, so a term like sin(2*x) is not rounded at every step. The
conv runs in the input dtype; under autocast in the autocast dtype, as nn.Conv2d does (then the
output has that dtype, as nn.Conv2d's has): x stays float32 until each g_i(x) is written, rounded
once, into the low-precision stack.

Speed: for T >= 2 terms the stack is one buffer in the conv dtype that each g_i writes into in
place (no float32 intermediates, no cat copy), and its backward is one fused multiply-add per term,
sum_i g_i'(x) * dG_i (_Stack). The offset layer A*(x - B) is conv(x, A, bias - sum_taps(A*B)): four
aten ops with C++ autograd (runner's affine). At small sizes the host time per call outweighs the
kernels, so whatever is fixed per call signature (the _Recipe, the conv arguments) is decided once
in runner(call), which functional.convnd keeps.
"""
from __future__ import annotations

import functools

import contextlib
import operator
from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .. import reductions
from ..geometry import Geometry, pad_input
from ..ir import OpSpec, partials, topo_order
from ..ir.ops import OPS
from ..ir.sympy_bridge import separate, value_at_zero
from ..plan import plan_for
from .composite import transform_active
from .registry import Backend, register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
       "pow": operator.pow, "neg": operator.neg}
_OUT_OPS = ("pow", "mul", "exp", "sin", "cos")  # single-op g_i written straight into the stack (out=)


@functools.lru_cache(maxsize=1024)  # Exprs are interned: identity is equality; the IR walk once per expression
def _compile(e):
    """(x, weights) -> value of e in torch ops, like ir.evaluate, with constants as Python floats:
    no tensor is created per call (on CUDA each would be a host-to-device copy) and a Python scalar
    never promotes the tensor it meets. Returns a float when e is a constant."""
    if e.op in ("input", "weight", "const"):  # a bare leaf (most h_i): no memo, no loop
        return (lambda x, w: x) if e.op == "input" else (lambda x, w, n=e.value: w[n]) if e.op == "weight" \
            else (lambda x, w, v=e.value: v)
    order = topo_order(e)

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
                    v = OPS[n.op].torch(*(t if isinstance(t, torch.Tensor) else
                                          torch.full((), t, dtype=like.dtype, device=like.device) for t in a))
            memo[n] = v
        return memo[e]

    return run


@dataclass(frozen=True)
class _Term:
    """One g_i(x): how to write it into its slot of the stack, and how to add g_i'(x) * dG_i."""
    g: object  # compiled g_i
    kind: str  # "x" (g = x), "op" (one op of x and constants: written with out=), "expr"
    op: tuple  # for "op": (torch fn, args with None where x goes)
    dkind: str  # g_i'(x) is "const" c, "cx" (c * x) or "expr"
    dc: float
    dg: object  # compiled g_i' for "expr"
    write: object  # (x, xc, slot) -> None: g_i(x) into its slot, built once (no per-call branching)

    def accumulate(self, acc, xc, gslot):
        """acc + g_i'(x) * dG_i, out of place (acc may alias the incoming gradient), in xc's dtype."""
        if self.dkind == "const":
            if acc is None:  # dG_i itself (a view, never written to): the next term promotes it
                return gslot if self.dc == 1.0 else torch.mul(gslot.to(xc.dtype), self.dc)
            return torch.add(acc, gslot, alpha=self.dc)
        d = xc if self.dkind == "cx" else self.dg(xc, None)
        if acc is None:
            out = torch.mul(d, gslot)
            return out if self.dc == 1.0 else torch.mul(out, self.dc)
        return torch.addcmul(acc, d, gslot, value=self.dc)


def _term(g) -> _Term:
    (dg,) = partials(g, (("input", "x"),))
    if dg.is_const:
        dkind, dc = "const", dg.value
    elif dg.op == "input":
        dkind, dc = "cx", 1.0
    elif dg.op == "mul" and dg.args[0].is_const and dg.args[1].op == "input":
        dkind, dc = "cx", dg.args[0].value
    else:
        dkind, dc = "expr", 1.0
    if g.op == "input":
        kind, op = "x", None
    elif g.op in _OUT_OPS and all(a.op in ("input", "const") for a in g.args):
        kind, op = "op", (OPS[g.op].torch, tuple(None if a.op == "input" else a.value for a in g.args))
    else:
        kind, op = "expr", None
    gc = _compile(g)
    return _Term(gc, kind, op, dkind, dc, _compile(dg) if dkind == "expr" else None, _writer(kind, op, gc))


def _writer(kind, op, gc):
    if kind == "x":
        return lambda x, xc, slot: slot.copy_(x)
    if kind == "expr":
        return lambda x, xc, slot: slot.copy_(gc(xc, None))
    fn, args = op  # one op, computed in x's dtype (one rounding), cast on write
    if len(args) == 1:
        return lambda x, xc, slot: fn(x, out=slot)
    if len(args) == 2 and args[0] is None and args[1] is not None:  # x**2, x*3: no generator per call
        a = args[1]
        return lambda x, xc, slot: fn(x, a, out=slot)
    return lambda x, xc, slot: fn(*(x if a is None else a for a in args), out=slot)


@dataclass(frozen=True)
class _Lowering:
    terms: tuple  # _Term per g_i
    hs: tuple  # compiled h_i(w)
    const: object  # compiled c(w) without its numeric factor, or None
    const_scale: float  # c(w) = const_scale * const(w)
    zero_safe: bool  # every g_i(0) == 0: zero padding commutes with g
    affine: tuple = ()  # (P, Q) when op = x*P + const_scale*P*Q (the offset layer): runner's affine


@lru_cache(maxsize=256)
def _lowering(spec: OpSpec) -> _Lowering:
    sep = separate(spec.expr)  # cached: the same analysis the plan made
    # c = scale * c': the number goes into the bias update's alpha, not a kernel (-(A*B): alpha -1)
    scale, c = sep.const_split or (1.0, None)
    affine = ()
    if len(sep.terms) == 1 and sep.terms[0][0].op == "input" and sep.terms[0][1].op == "weight" and \
            c is not None and c.op == "mul" and all(a.op == "weight" for a in c.args):
        p, q = sep.terms[0][1], c.args[0] if c.args[1] is sep.terms[0][1] else c.args[1]
        affine = (p.value, q.value) if p in c.args and p is not q else ()
    return _Lowering(tuple(_term(g) for g, _ in sep.terms), tuple(_compile(h) for _, h in sep.terms),
                     None if c is None else _compile(c), scale,
                     all(value_at_zero(g) == 0.0 for g, _ in sep.terms), affine)


# What _Stack needs besides x, fixed per lowering and groups (one Function argument, not five):
# order = the backward's accumulation order (constant-derivative terms first: the cheapest start),
# need_xc = some term is a general expression, which reads x in the compute dtype.
_StackCfg = namedtuple("_StackCfg", "terms groups order need_xc")


def _stack_cfg(terms: tuple, groups: int) -> _StackCfg:
    order = tuple(sorted(range(len(terms)), key=lambda i: terms[i].dkind != "const"))
    return _StackCfg(terms, groups, order, any(t.kind == "expr" for t in terms))


class _Stack(torch.autograd.Function):
    """G = [g_1(x), ..., g_T(x)] per group along channels, in the conv dtype; dx = sum_i g_i'(x) dG_i.

    With groups == 1 the stack is (N, T*C, ...) and its T slots are one chunk() of it (no per-slot
    view, no reshape back): host time per view is comparable to a small conv's."""

    @staticmethod
    def run(x, s, ct, cd):
        n, c = x.shape[:2]
        t = len(s.terms)
        if s.groups == 1:  # chunk: one native call (Tensor.split is a Python wrapper, 4 us here)
            xv = x
            shape = list(x.shape)
            shape[1] = t * c
            buf = torch.empty(shape, dtype=cd, device=x.device)
            slots = buf.chunk(t, 1)
        else:
            xv = x.unflatten(1, (s.groups, c // s.groups))
            buf = torch.empty((n, s.groups, t, c // s.groups) + tuple(x.shape[2:]), dtype=cd, device=x.device)
            slots = buf.unbind(2)
        xc = (xv if xv.dtype == ct else xv.to(ct)) if s.need_xc else None
        for term, slot in zip(s.terms, slots):
            term.write(xv, xc, slot)
        return buf if s.groups == 1 else buf.flatten(1, 3)

    @staticmethod
    def forward(ctx, x, s, ct, cd):
        ctx.save_for_backward(x)
        ctx.s, ctx.ct = s, ct
        return _Stack.run(x, s, ct, cd)

    @staticmethod
    def backward(ctx, gG):
        (x,) = ctx.saved_tensors
        s, terms = ctx.s, ctx.s.terms
        c = x.shape[1]
        if s.groups == 1:
            xv, gv = x, gG.chunk(len(terms), 1)
        else:
            xv = x.unflatten(1, (s.groups, c // s.groups))
            gv = gG.unflatten(1, (s.groups, len(terms), c // s.groups)).unbind(2)
        xc = xv if xv.dtype == ctx.ct else xv.to(ctx.ct)
        acc = None
        for i in s.order:
            acc = terms[i].accumulate(acc, xc, gv[i])
        acc = acc if s.groups == 1 else acc.flatten(1, 2)
        return acc if acc.dtype == x.dtype else acc.to(x.dtype), None, None, None


@dataclass(frozen=True)
class _Recipe:
    """Everything about a call that depends only on (op, reduce, geometry), decided once."""
    conv: object
    stride: tuple
    padding: object  # the native conv's padding argument
    dilation: tuple
    groups: int
    pre: bool  # pad x before the g_i (reflect / replicate / circular / zeros with g_i(0) != 0)
    post: tuple  # F.pad argument to zero-pad G after the g_i (asymmetric "ignore"), or ()
    ignore: bool  # "ignore" with padding: constants and counts follow the validity mask
    full: tuple  # (O, Cg, *k)
    sum_dims: tuple  # every dim but O
    mean_scale: float  # 1 / (Cg*K) for mean (not under ignore: that divides by the valid count)


@lru_cache(maxsize=1024)
def _recipe(spec: OpSpec, reduce: str, g: Geometry) -> _Recipe:
    low = _lowering(spec)
    padded = any(lo or hi for lo, hi in g.pad)
    symmetric = all(lo == hi for lo, hi in g.pad)
    ignore = g.padding_mode == "ignore" and padded
    # The native conv pads g_i(x) with zeros: right for "ignore", and for "zeros" when g_i(0) = 0.
    native = padded and symmetric and (ignore or (g.padding_mode == "zeros" and low.zero_safe))
    flat = tuple(v for lh in reversed(g.pad) for v in lh)
    return _Recipe(_CONV[g.dims], g.stride, tuple(lo for lo, _ in g.pad) if native else 0, g.dilation, g.groups,
                   padded and not native and not ignore, flat if ignore and not native else (), ignore,
                   (g.out_channels, g.cin_per_group) + g.kernel, tuple(range(1, g.dims + 2)),
                   1.0 / (g.cin_per_group * g.taps) if reductions.get(reduce).backward == "count" and not ignore else 1.0)


def _unsupported(call):
    if call.geometry.holes:
        return "transposed convolutions run on the direct backends for now (inserted zeros are no taps)"
    plan = plan_for(call.spec, call.reduce)
    if plan.strategy != "decompose":
        return f"the plan is direct: {plan.reason}"
    return None


def _dtypes(x: torch.Tensor):
    """(compute dtype for g_i, h_i and constants; dtype the native conv runs in)."""
    dt = x.dtype
    if dt == torch.float32:
        dev = x.device.type
        # what autocast would cast the conv's inputs to
        return (dt, torch.get_autocast_dtype(dev)) if _autocasting(dev) else (dt, dt)
    return (dt, dt) if dt == torch.float64 else (torch.float32, dt)


def _full(v, full: tuple, dtype, device) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        return torch.full((), v, dtype=dtype, device=device).expand(full)
    if v.dtype != dtype:
        v = v.to(dtype)
    return v if v.shape == full else v.expand(full)


def _make_runner(call):
    """(x, bias, weights) -> y for one call signature: the lowering, the recipe and the Functions'
    fixed arguments are looked up once here, not per call (hashing an OpSpec and a Geometry on
    every call cost more host time than this backend's conv at small sizes)."""
    g: Geometry = call.geometry
    low = _lowering(call.spec)
    try:
        r = _recipe(call.spec, call.reduce, g)
    except TypeError:  # symbolic sizes (torch.compile dynamic shapes) are unhashable: not cached
        r = _recipe.__wrapped__(call.spec, call.reduce, g)
    stack = _stack_cfg(low.terms, g.groups) if len(low.terms) > 1 else None

    def general(x, bias, weights):
        return _general(x, bias, weights, call, low, r, stack)

    if not (low.affine and not r.ignore and r.mean_scale == 1.0):
        return general
    pn, qn = low.affine
    alpha, sdims, full, pre = low.const_scale, r.sum_dims, r.full, r.pre
    conv, stride, padding, dilation, groups = r.conv, r.stride, r.padding, r.dilation, r.groups

    def affine_ops(x, bias, weights):
        """The offset layer A*(x - B) = conv(x, P) + bias + alpha * sum_taps(P*Q) as four aten ops
        (mul, sum, add, conv) under torch's C++ autograd: on the H100 machine's host a Python
        autograd Function around the same conv cost more host time per fwd+bwd than the three small
        weight-sized kernels it saved (eager 1.92x nn.Conv2d against 1.52x for these ops).
        Under autocast the conv casts x, P and the bias as nn.Conv2d does; the constant stays fp32."""
        P = weights[pn]
        s = torch.mul(P, weights[qn]).sum(sdims)
        b = torch.mul(s, alpha) if bias is None else torch.add(bias, s, alpha=alpha)
        return conv(pad_input(x, g) if pre else x, P, b, stride, padding, dilation, groups)

    def usable(x, bias, weights) -> bool:
        """Whether affine_ops applies: fp32 / fp64 throughout, full-shaped weights. Otherwise (half
        inputs, mixed dtypes, broadcast weights) general runs the same math."""
        P, Q = weights[pn], weights[qn]
        dt = x.dtype
        return ((dt is torch.float32 or dt is torch.float64) and P.dtype is dt and Q.dtype is dt
                and (bias is None or bias.dtype is dt) and P.shape == full and Q.shape == full)

    def affine(x, bias, weights):
        if usable(x, bias, weights) and not torch.compiler.is_compiling():
            return affine_ops(x, bias, weights)
        return general(x, bias, weights)

    # for runner_for: the branch taken once per call signature
    affine.specialize = lambda x, bias, weights: affine_ops if usable(x, bias, weights) else general
    return affine


_runner_cached = lru_cache(maxsize=1024)(_make_runner)


def runner(call):
    """The cached (x, bias, weights) -> y for `call` (functional.convnd keeps it with the call)."""
    try:
        return _runner_cached(call)
    except TypeError:  # symbolic sizes: unhashable, built per call
        return _make_runner(call)


def runner_for(call, x, bias, weights):
    """runner(call) specialized to these tensors: functional.convnd keeps it under a cache key that
    holds their dtypes and shapes, and never calls it while tracing (the offset layer's checks are
    then made once, not per call)."""
    run = runner(call)
    specialize = getattr(run, "specialize", None)
    return run if specialize is None else specialize(x, bias, weights)


def _run(x, bias, weights, call):
    return runner(call)(x, bias, weights)


def _general(x, bias, weights, call, low, r, stack):
    g: Geometry = call.geometry
    ct, cd = _dtypes(x)
    terms = low.terms
    dev = x.device

    xin = pad_input(x, g) if r.pre else x
    if len(terms) == 1 and terms[0].kind == "x":
        G = xin if xin.dtype == cd else xin.to(cd)
    elif len(terms) == 1:  # one term: plain autograd is already one kernel each way
        G = terms[0].g(xin if (xin.dtype == ct or terms[0].kind == "op") else xin.to(ct), None)
        G = G if G.dtype == cd else G.to(cd)
    elif torch.compiler.is_compiling() or transform_active():  # traced, or vmap / jvp...: aten ops only
        gx = [t.g(xin if xin.dtype == ct else xin.to(ct), None).to(cd) for t in terms]
        G = torch.stack([t.unflatten(1, (g.groups, g.cin_per_group)) for t in gx], 2).flatten(1, 3)
    else:
        G = (_Stack.apply if torch.is_grad_enabled() and xin.requires_grad else _Stack.run)(xin, stack, ct, cd)
    if r.post:
        G = F.pad(G, r.post)

    w = weights
    for t in weights.values():
        if t.dtype != ct:
            w = {n: (t if t.dtype == ct else t.to(ct)) for n, t in weights.items()}
            break
    hs = [_full(fn(None, w), r.full, ct, dev) for fn in low.hs]
    if r.mean_scale != 1.0:
        hs = [h * r.mean_scale for h in hs]
    # (O, T*Cg, *k), T-major per group: the cat along dim 1 is stack(hs, 1).flatten(1, 2) in one op
    H = hs[0] if len(hs) == 1 else torch.cat(hs, 1)
    H = H if H.dtype == cd else H.to(cd)

    b = bias if bias is None or bias.dtype == ct else bias.to(ct)
    cmap = mask = None
    if r.ignore:
        mask = _mask(g, dev, ct)
    if low.const is not None:
        cw = _full(low.const(None, w), r.full, ct, dev)
        if r.ignore:  # constant at valid taps only: the mask convolved with the per-tap constant
            with _autocast_off(x):  # tap counts and constants: never in bfloat16
                cmap = r.conv(mask, cw.sum(1, keepdim=True) * low.const_scale, None, g.stride, 0, g.dilation)
        else:
            s = cw.sum(r.sum_dims)
            alpha = low.const_scale * r.mean_scale
            b = torch.mul(s, alpha) if b is None else torch.add(b, s, alpha=alpha)
    per_tap = reductions.get(call.reduce).backward == "count"  # mean: divided by the tap count
    if r.ignore and per_tap:
        bias_after, b = b, None  # mean over valid taps: the bias is added after the division
    y = r.conv(G, H, b if b is None or b.dtype == cd else b.to(cd), r.stride, r.padding, r.dilation, r.groups)
    if not r.ignore:
        return y
    out = y.dtype
    if cmap is not None:
        y = y + cmap
    if per_tap:
        with _autocast_off(x):
            count = r.conv(mask, torch.ones((1, 1) + g.kernel, dtype=ct, device=dev), None, g.stride, 0,
                           g.dilation) * g.cin_per_group
        # A window with no valid tap is a mean of nothing: NaN, as in the reference, but only
        # in the value: 1/0 in the gradient would turn the weights' gradient into NaN too.
        has = count > 0
        y = y * torch.where(has, 1.0 / count, 0.0) + torch.where(has, 0.0, float("nan"))
        if bias_after is not None:
            y = y + bias_after.reshape((1, -1) + (1,) * g.dims)
    return y.to(out)


def _autocasting(dev: str) -> bool:
    try:
        return torch.is_autocast_enabled(dev)
    except RuntimeError:  # a device type without autocast (meta, for FSDP-style deferred init)
        return False


def _autocast_off(x):
    # torch.autocast(enabled=False) itself raises on a device type without autocast (meta)
    return torch.autocast(x.device.type, enabled=False) if torch.amp.is_autocast_available(x.device.type) \
        else contextlib.nullcontext()


def _mask(g: Geometry, device, dtype) -> torch.Tensor:
    """(1, 1, *padded) validity mask: 1 on the real input, 0 on the padding."""
    ones = torch.ones((1, 1) + g.in_size, dtype=dtype, device=device)
    return F.pad(ones, [v for lh in reversed(g.pad) for v in lh])


register(Backend("decompose", _unsupported, _run, 10,
                 "separable ops with a linear reduce (sum, mean) as one native convolution (cuDNN / oneDNN)",
                 pure=True, traceable=True, runner_for=runner_for))
