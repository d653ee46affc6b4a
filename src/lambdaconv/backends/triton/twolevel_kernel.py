"""Two-level reductions reduce=(max or min, sum or mean) fused in generated triton kernels.

Morphological layers: y[n, o, p] = OUTER over the group's channels c of INNER over c's taps t of
op(x, w). The depthwise route (lambdaconv/twolevel.py) writes the per-channel values and their
winners, in_channels/groups times the output, and its backward sends each of them to its winner by
atomic adds that collide on the weights (N x O x P x C adds onto O x C x T addresses). Here:

- `_fwd2` keeps the inner value of one channel in registers (channels outer, taps inner) and adds
  it into the outer sum: nothing per channel is stored.
- `_bwd2` recomputes each channel's winners in registers (a first pass over its taps, first winner
  as torch's max, NaN winning), then, per tap, reduces the winners' terms over the tile before one
  atomic add: the weight gradient over the tile's rows (one add per out channel and tap), the input
  gradient over its out channels (one per row and tap). The taps are evaluated twice, the forward's
  work once more; memory: the inputs, the outputs and the gradients only.

Outer mean divides by the channels per group. Gradients under create_graph=True come from the
definition (reference_conv), as the tiled two-level path does.
"""
from __future__ import annotations

from textwrap import indent

import torch

from ... import reductions
from ...geometry import Geometry, pad_input
from ...reference import reference_conv
from ...settings import interpreting
from .. import composite
from . import templates as T
from . import tuning
from .codegen import PRELUDE, Unprintable, emit, fill, lines

INNER = {"max": (">", "-inf", "maximum"), "min": ("<", "inf", "minimum")}  # cmp, identity, tl function
OUTER = ("sum", "mean")

_PROLOGUE = """\
    T: tl.constexpr = KD * KH * KW
    P: tl.constexpr = OD * OH * OW
    S: tl.constexpr = ID * IH * IW
""" + T.FWD_ROWS + """\
    y_off = n.to(tl.int64)[:, None] * (O * P) + (g * OG + offs_o)[None, :] * P + p[:, None]
    mask = m_ok[:, None] & o_ok[None, :]"""

# one tap t of channel c (inside the channel loop): the forward's index math, the input value, the weights
_TAP = indent(T.FWD_TAP, "    ") + """\
            x_off = x_base + (id_ * (IH * IW) + ih * IW + iw) + _wide(c, I64) * S
            xv = tl.load(x_ptr + x_off, mask=ok, other=0.0).to(CT)[:, None]
$W_LOADS"""

# the op at tap t of channel c; under "ignore" a tap on the padding holds the inner identity
_VALUE = """\
$TAP
$OP_CODE
            v = $OP_OUT
            if IGNORE:
                v = tl.where(okf[:, None] != 0.0, v, float('$IDENTITY'))
"""

FORWARD2 = '''

@triton.jit
def _fwd2(
    x_ptr,  # input (N, C, ID, IH, IW), contiguous, any float dtype
$W_ARGS
    y_ptr,  # output (N, O, OD, OH, OW), contiguous, in the output dtype (bias added by the caller)
    n_rows,  # N * OD * OH * OW
$GEOMETRY
    OUTER_MEAN: tl.constexpr,  # the outer reduction is mean (else sum)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    CT: tl.constexpr = tl.float32
$PROLOGUE
    res = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for c in range(CG):
        inner = tl.full([BLOCK_M, BLOCK_N], float('$IDENTITY'), tl.float32)
        for t in range(T):
''' + _VALUE + '''            inner = tl.$PICK(inner, v, propagate_nan=tl.PropagateNan.ALL)
        res += inner
    if OUTER_MEAN:
        res = res / CG
    tl.store(y_ptr + y_off, res.to(y_ptr.dtype.element_ty), mask=mask)
'''

BACKWARD2 = '''

@triton.jit
def _bwd2(
    x_ptr,  # input (N, C, ID, IH, IW), contiguous
$W_ARGS
    gy_ptr,  # (N, O, OD, OH, OW) upstream gradient, contiguous
    gx_ptr,  # fp32 (N, C, ID, IH, IW) zeroed: gradient of the input, accumulated (read if NEED_X)
$GW_ARGS
    n_rows,  # N * OD * OH * OW
$GEOMETRY
    OUTER_MEAN: tl.constexpr, NEED_X: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    CT: tl.constexpr = tl.float32
$PROLOGUE
    gy = tl.load(gy_ptr + y_off, mask=mask, other=0.0).to(tl.float32)
    if OUTER_MEAN:
        gy = gy / CG
    for c in range(CG):
        # the channel's winners: the first tap reaching its max / min (NaN wins), -1 where none
        best = tl.full([BLOCK_M, BLOCK_N], float('$IDENTITY'), tl.float32)
        win = tl.full([BLOCK_M, BLOCK_N], -1, tl.int32)
        for t in range(T):
''' + _VALUE + '''            better = (v $CMP best) | ((v != v) & (best == best)) | ((win < 0) & (okf[:, None] != 0.0))
            best = tl.where(better, v, best)
            win = tl.where(better, t, win)
        # each tap's winners' terms, reduced over the tile before one atomic add per row / out channel
        for t in range(T):
$TAP
$D_CODE
            hit = (win == t) & mask
$ATOMICS
'''

W_ARG = "    w{i}_ptr,  # weight {name!r}, (G, CG * T, OG)"
GW_ARG = "    gw{i}_ptr,  # fp32 (O, CG * T) zeroed: gradient of weight {name!r}, accumulated"
ATOMIC_X = ("            if NEED_X:\n"
            "                tl.atomic_add(gx_ptr + x_off, tl.sum(tl.where(hit, gy * ({out}), 0.0), axis=1), mask=ok)")
ATOMIC_W = ("            tl.atomic_add(gw{i}_ptr + (g * OG + offs_o) * (CG * T) + c * T + t,\n"
            "                          tl.sum(tl.where(hit, gy * ({out}), 0.0), axis=0), mask=o_ok)")


def applies(reduce: tuple) -> bool:
    return reduce[0] in INNER and reduce[1] in OUTER


def source(spec, inner: str, need_w: tuple) -> str:
    """The module text (Unprintable where the triton printer lacks an op)."""
    names = spec.weight_names
    wv = {n: f"w_{i}" for i, n in enumerate(names)}
    cmp, ident, pick = INNER[inner]
    code, (out,) = emit([spec.expr], "xv", wv, 12)
    parts = spec.partials()
    wanted = [parts[0]] + [pt for pt, k in zip(parts[1:], need_w) if k]
    dcode, douts = emit(wanted, "xv", wv, 12, prefix="_d")
    hooks = dict(GEOMETRY=T.GEOMETRY.rstrip("\n"), PROLOGUE=_PROLOGUE, W_ARGS=lines(W_ARG, names),
                 TAP=fill(_TAP, W_LOADS=lines(T.W_LOAD_FWD, names)), OP_CODE=code, OP_OUT=out, IDENTITY=ident)
    atomics = [ATOMIC_X.format(out=douts[0])]
    atomics += [ATOMIC_W.format(i=i, out=o) for i, o in enumerate(douts[1:])]
    gw_names = [n for n, k in zip(names, need_w) if k]
    return "\n".join([fill(T.HEADER, OP=str(spec.expr).replace("\n", " "), REDUCE=f"({inner}, outer)"), PRELUDE,
                      fill(FORWARD2, PICK=pick, **hooks),
                      fill(BACKWARD2, CMP=cmp, D_CODE=dcode, ATOMICS="\n".join(atomics),
                           GW_ARGS=lines(GW_ARG, gw_names), **hooks)])


_MODULES: dict = {}


def module(spec, inner: str, need_w: tuple, interp: bool):
    """The loaded kernels of (op, inner reduction, weight gradients), or None where they cannot be printed."""
    key = (spec, inner, need_w, interp)
    if key not in _MODULES:
        from .kernels import load
        try:
            _MODULES[key] = load(source(spec, inner, need_w), interp)
        except Unprintable:
            _MODULES[key] = None
    return _MODULES[key]


def _launch(fn, args, k, g: Geometry, interp: bool, **kw) -> None:
    bm, bn, warps = (16, 16, 1) if interp else (64, 32, 4)
    bn = min(bn, max(1, 1 << max(0, (g.cout_per_group - 1).bit_length())))
    rows = g.batch * g.positions
    grid = tuning.fold((triton_cdiv(rows, bm), triton_cdiv(g.cout_per_group, bn), g.groups), k["FOLD"])
    fn[grid](*args, rows, **k, **kw, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _prepare(g: Geometry, wts) -> tuple:
    """(interpreting, padding in the kernel, constexprs, full weight shape, weights in the forward
    layout (G, CG * T, OG)): zeros / ignore padding by masked loads, other modes padded by torch."""
    from .function import _FWD_LAYOUT, _layout_view, _w_layout, consts
    in_pad = g.padding_mode in ("zeros", "ignore")
    full = (g.out_channels, g.cin_per_group) + g.kernel
    view = _layout_view(g, _FWD_LAYOUT)
    return (interpreting(), in_pad, consts(g, in_pad), full,
            [_w_layout(w, g, _FWD_LAYOUT, view, full) for w in wts])


class TwoLevelTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, spec, g, reduce, names, *wts):
        interp, in_pad, k, full, wf = _prepare(g, wts)
        xk = (x if in_pad else pad_input(x, g)).contiguous()
        y = x.new_empty((g.batch, g.out_channels) + g.out_size)
        need_w = tuple(ctx.needs_input_grad[5:])
        mod = module(spec, reduce[0], need_w, interp)
        if g.batch * g.positions:
            _launch(mod._fwd2, (xk, *wf, y), k, g, interp, OUTER_MEAN=reduce[1] == "mean")
        ctx.save_for_backward(x, *wts)
        ctx.meta = (spec, g, reduce, names, need_w)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, *wts = ctx.saved_tensors
        spec, g, reduce, names, need_w = ctx.meta
        need_x = ctx.needs_input_grad[0]
        if torch.is_grad_enabled():  # create_graph=True: the definition, differentiable again
            def fn(x, *w):
                return reference_conv(x, spec, dict(zip(names, w)), None, g, reduce,
                                      dtype=composite.compute_dtype(x.dtype)).to(x.dtype)
            gx, *gws = composite.graph_grads(fn, [x, *wts], (need_x,) + need_w, gy)
            return (gx, None, None, None, None, *gws)
        interp, in_pad, k, full, wf = _prepare(g, wts)
        xr = x.detach().requires_grad_(need_x and not in_pad)
        with torch.enable_grad():
            xk = xr if in_pad else pad_input(xr, g)
        xkc = xk.detach().contiguous()
        gx = torch.zeros(xkc.shape, dtype=torch.float32, device=x.device)
        gw = [torch.zeros((g.out_channels, g.cin_per_group * g.taps), dtype=torch.float32, device=x.device)
              for need in need_w if need]
        mod = module(spec, reduce[0], need_w, interp)
        if g.batch * g.positions:
            _launch(mod._bwd2, (xkc, *wf, gy.contiguous(), gx, *gw), k, g, interp, OUTER_MEAN=reduce[1] == "mean",
                    NEED_X=bool(need_x))
        out_x = None
        if need_x:
            out_x = (gx if in_pad else torch.autograd.grad(xk, xr, gx.to(xk.dtype))[0]).to(x.dtype)
        it = iter(gw)
        gws = [next(it).reshape(full).sum_to_size(w.shape).to(w.dtype) if need else None
               for w, need in zip(wts, need_w)]
        return (out_x, None, None, None, None, *gws)


def runs(reduce: tuple, spec, x, backend: str) -> bool:
    """Whether this two-level call runs here: a (max / min, sum / mean) pair, the triton kernels
    (CUDA; CPU tensors under TRITON_INTERPRET when the backend is named), an op they can print."""
    if not applies(reduce) or x.dtype == torch.float64 or composite.transform_active():
        return False
    if not (backend == "auto" and x.device.type == "cuda" or backend == "triton"
            and (x.device.type == "cuda" or x.device.type == "cpu" and interpreting())):
        return False
    from . import available
    if not available():
        return False
    try:
        source(spec, reduce[0], tuple(True for _ in spec.weight_names))
    except Unprintable:
        return False
    return True


def run(x, spec, ws: dict, reduce: tuple, g: Geometry) -> torch.Tensor:
    """(N, O, *out) in x's dtype; ws broadcast to (O, Cg, *k), g's out_channels is theirs."""
    if reductions.get(reduce[1]).name not in OUTER:  # pragma: no cover (runs() checked it)
        raise ValueError(f"no fused triton kernel for the outer reduction {reduce[1]!r}")
    return TwoLevelTriton.apply(x, spec, g, reduce, tuple(ws), *ws.values())
