"""Two-level reductions reduce=(max or min, sum or mean) fused in generated triton kernels.

Morphological layers: y[n, o, p] = OUTER over the group's channels c of INNER over c's taps t of
op(x, w). The depthwise route (lambdaconv/twolevel.py) writes the per-channel values and their
winners, in_channels/groups times the output, and its backward sends each of them to its winner by
atomic adds that collide on the weights (N x O x P x C adds onto O x C x T addresses). Here:

- `_fwd2` keeps the inner value of one channel in registers (channels outer, taps inner, unrolled)
  and adds it into the outer sum: nothing per channel is stored.
- `_bwd2` (one program per channel, out-channel block and chunk of rows) recomputes the channel's
  winners in registers (first winner as torch's max, NaN winning), then per tap reduces the
  winners' terms over the tile: the input gradient's over its out channels (one atomic add per row
  and tap), the weight gradient's over the rows, summed over the chunk before one atomic add per
  out channel and tap. The taps are evaluated twice, the forward's work once more; memory: the
  inputs, the outputs and the gradients only.
- Every mode but "ignore" comes padded by torch, so the loads need no masks and a tap's load is
  the channel's pointer plus a constant (`sass --kernel fwd2|bwd2` counts the loops).

Outer mean divides by the channels per group. Gradients under create_graph=True come from the
definition (reference_conv), as the tiled two-level path does.
"""
from __future__ import annotations

from textwrap import indent

import torch
import triton

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

# The rows of a tile: tail rows re-read the last row (never stored, their gy is 0 in the
# backward), out channels past the end re-read the last one, so loads need no masks where the
# input is padded already (every tap inside): a tap's load is then the channel's pointer plus a
# constant, and its 9 loads per channel take immediate offsets.
_ROWS = """\
    m_ok = offs_m < n_rows
    o_ok = offs_o < OG
    mr = tl.minimum(offs_m, n_rows - 1)
    n = mr // P
    p = mr % P
    od = p // (OH * OW)
    oh = (p // OW) % OH
    ow = p % OW
    x_base = n.to(tl.int64) * (C * S) + g * (CG * S)
    oc = offs_o
    if OG % BLOCK_N != 0:  # a clamp only where needed: it hides the columns' contiguity (vector loads)
        oc = tl.minimum(offs_o, OG - 1)
    w_base = g * (CG * T * OG) + oc
    y_off = n.to(tl.int64)[:, None] * (O * P) + (g * OG + offs_o)[None, :] * P + p[:, None]
    mask = m_ok[:, None] & o_ok[None, :]"""
_SIZES = """\
    CT: tl.constexpr = tl.float32
    T: tl.constexpr = KD * KH * KW
    P: tl.constexpr = OD * OH * OW
    S: tl.constexpr = ID * IH * IW"""
_PROLOGUE = _SIZES + """
    pid_m, pid_n, g = _pid3(tl.cdiv(n_rows, BLOCK_M), (OG + BLOCK_N - 1) // BLOCK_N, FOLD, I64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
""" + _ROWS

# one tap t of channel c: its position, whether it is inside the input (only where the kernel
# pads: "ignore"; other modes come padded by torch), the input value, the weights
_TAP = indent(T.TAP_POS, "    ") + """\
            if IGNORE:
                ok = m_ok & (id_ >= 0) & (id_ < ID) & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW)
            else:
                ok = m_ok
            okf = tl.where(ok, 1.0, 0.0)
            x_off = x_base + (id_ * (IH * IW) + ih * IW + iw) + _wide(c, I64) * S
            if IGNORE:
                xv = tl.load(x_ptr + x_off, mask=ok, other=0.0).to(CT)[:, None]
            else:
                xv = tl.load(x_ptr + x_off).to(CT)[:, None]
$W_LOADS"""
W_LOAD = "            w_{i} = tl.load(w{i}_ptr + w_base + (_wide(c, I64) * T + t) * OG).to(CT)[None, :]"

# the op at tap t of channel c; under "ignore" a tap on the padding holds the inner identity
_VALUE = """\
$TAP
$OP_CODE
            v = $OP_OUT
            if IGNORE:
                v = tl.where(okf[:, None] != 0.0, v, float('$IDENTITY'))
"""

WIN = """\
            better = (v $CMP best) | ((v != v) & (best == best)) | ((win < 0) & (okf[:, None] != 0.0))
            best = tl.where(better, v, best)
            win = tl.where(better, t, win)"""
GRAD = """\
$TAP
$D_CODE
            hit = (win == t) & in_tile
$ATOMICS"""


def _tap_loop(body: str) -> str:
    """The loop over a channel's taps t (body written at 12 spaces, the loop at 8): unrolled where
    T <= 32, so that each tap's offsets and masks are constants of the channel loop, computed once
    per row tile and not per channel (the rolled loop redid them: 14.7 instructions per tap in the
    forward, 2 of them the op's)."""
    b = indent(body.rstrip("\n"), "    ")
    return ("        if T <= 32:\n            for t in tl.static_range(T):\n" + b
            + "\n        else:\n            for t in range(T):\n" + b)


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
$PROLOGUE
    res = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for c in range(CG):
        inner = tl.full([BLOCK_M, BLOCK_N], float('$IDENTITY'), tl.float32)
$FWD_TAPS
        res += inner
    if OUTER_MEAN:
        res = res / CG
    tl.store(y_ptr + y_off, res.to(y_ptr.dtype.element_ty), mask=mask)
'''

# The backward: a program takes one channel c of one group, an out-channel block and a chunk of
# rows (row tiles in a loop), so its weight-gradient sums stay in registers over the chunk: one
# atomic add per (program, out channel, tap) instead of one per row tile (29M adds onto the 37k
# weights at N16 C64 O64 56x56 with one tile per program, 784 per address).
BACKWARD2 = '''

@triton.jit
def _bwd2(
    x_ptr,  # input (N, C, ID, IH, IW), contiguous
$W_ARGS
    gy_ptr,  # (N, O, OD, OH, OW) upstream gradient, contiguous
    gx_ptr,  # fp32 (N, C, ID, IH, IW) zeroed: gradient of the input, accumulated (read if NEED_X)
$GW_ARGS
    n_rows,  # N * OD * OH * OW
    chunk,  # rows per program (a multiple of BLOCK_M)
$GEOMETRY
    OUTER_MEAN: tl.constexpr, NEED_X: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    T_P: tl.constexpr,  # the taps T rounded up to a power of two (the weight-gradient sums' rows)
):
$SIZES
    pid_r, pid_n, gc = _pid3(tl.cdiv(n_rows, chunk), (OG + BLOCK_N - 1) // BLOCK_N, FOLD, I64)
    g = gc // CG
    c = gc % CG
    offs_o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = offs_o < OG
    tt = tl.arange(0, T_P)[:, None]  # [T_P, 1]: the tap of each weight-gradient row
$GW_INIT
    r_end = tl.minimum(_wide(pid_r, I64) * chunk + chunk, n_rows)
    for m0 in range(_wide(pid_r, I64) * chunk, r_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
$ROWS
        gy = tl.load(gy_ptr + y_off, mask=mask, other=0.0).to(tl.float32)
        # the tile's valid outputs as a 2-d comparison of floats, not a broadcast boolean (templates.py)
        in_tile = (tl.where(m_ok, 1.0, 0.0)[:, None] * tl.where(o_ok, 1.0, 0.0)[None, :]) != 0.0
        if OUTER_MEAN:
            gy = gy / CG
        # the channel's winners: the first tap reaching its max / min (NaN wins), -1 where none
        best = tl.full([BLOCK_M, BLOCK_N], float('$IDENTITY'), tl.float32)
        win = tl.full([BLOCK_M, BLOCK_N], -1, tl.int32)
$WIN_TAPS
        # each tap's winners' terms: the input's reduced over the out channels (one atomic add per
        # row), the weights' over the rows, kept in the sums until the chunk ends
$GRAD_TAPS
$GW_STORE
'''

W_ARG = "    w{i}_ptr,  # weight {name!r}, (G, CG * T, OG)"
GW_ARG = "    gw{i}_ptr,  # fp32 (O, CG * T) zeroed: gradient of weight {name!r}, accumulated"
ATOMIC_X = ("            if NEED_X:\n"
            "                tl.atomic_add(gx_ptr + x_off, tl.sum(tl.where(hit, gy * ({out}), 0.0), axis=1), mask=ok)")
SUM_W = ("            gw_{i} += tl.where(tt == t, tl.sum(tl.where(hit, gy * ({out}), 0.0), axis=0)[None, :], 0.0)")
GW_INIT = "    gw_{i} = tl.zeros([T_P, BLOCK_N], tl.float32)"
GW_STORE = ("    tl.atomic_add(gw{i}_ptr + (g * OG + offs_o)[None, :] * (CG * T) + c * T + tt, gw_{i},\n"
            "                  mask=(tt < T) & o_ok[None, :])")


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
    hooks = dict(GEOMETRY=T.GEOMETRY.rstrip("\n"), PROLOGUE=_PROLOGUE, SIZES=_SIZES, ROWS=indent(_ROWS, "    "), W_ARGS=lines(W_ARG, names),
                 TAP=fill(_TAP, W_LOADS=lines(W_LOAD, names)), OP_CODE=code, OP_OUT=out, IDENTITY=ident)
    atomics = [ATOMIC_X.format(out=douts[0])]
    atomics += [SUM_W.format(i=i, out=o) for i, o in enumerate(douts[1:])]
    gw_names = [n for n, k in zip(names, need_w) if k]
    value = fill(_VALUE, **{k: hooks[k] for k in ("TAP", "OP_CODE", "OP_OUT", "IDENTITY")}).rstrip("\n")
    fwd_taps = _tap_loop(value + f"\n            inner = tl.{pick}(inner, v, propagate_nan=tl.PropagateNan.ALL)")
    win_taps = _tap_loop(value + "\n" + fill(WIN, CMP=cmp))
    grad_taps = _tap_loop(fill(GRAD, TAP=hooks["TAP"], D_CODE=dcode, ATOMICS="\n".join(atomics)))
    bwd = dict(hooks, WIN_TAPS=win_taps, GRAD_TAPS=grad_taps, GW_ARGS=lines(GW_ARG, gw_names),
               GW_INIT=lines(GW_INIT, gw_names), GW_STORE=lines(GW_STORE, gw_names))
    return "\n".join([fill(T.HEADER, OP=str(spec.expr).replace("\n", " "), REDUCE=f"({inner}, outer)"), PRELUDE,
                      fill(FORWARD2, FWD_TAPS=fwd_taps, **hooks), fill(BACKWARD2, **bwd)])


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


# (BLOCK_M, BLOCK_N, warps), by the instructions per tap `sass --kernel fwd2|bwd2 --block` counts
# (not timed on a GPU yet): forward 3.69 at 32 x 32 with 4 warps (128 registers); backward 13.0 per
# tap and pass at 64 x 16 with 2 warps (153 registers; its per-tap tile sums cost the most)
FWD_BLOCK, BWD_BLOCK, INTERP_BLOCK = (32, 32, 4), (64, 16, 2), (16, 16, 1)


def _block(which: tuple, g: Geometry, interp: bool) -> tuple:
    """(BLOCK_M, BLOCK_N, warps): the kernel's, BLOCK_N no wider than the group's out channels need."""
    bm, bn, warps = INTERP_BLOCK if interp else which
    return bm, min(bn, max(1, 1 << max(0, (g.cout_per_group - 1).bit_length()))), warps


def _launch(fn, args, k, g: Geometry, interp: bool, **kw) -> None:
    bm, bn, warps = _block(FWD_BLOCK, g, interp)
    rows = g.batch * g.positions
    grid = tuning.fold((triton.cdiv(rows, bm), triton.cdiv(g.cout_per_group, bn), g.groups), k["FOLD"])
    fn[grid](*args, rows, **k, **kw, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps)


def chunk_tiles(tiles: int, o_blocks: int, chans: int, sms: int) -> int:
    """Row tiles per backward program: as many as leave about 8 programs per SM, 1 to 64."""
    return max(1, min(64, tiles * o_blocks * chans // (8 * sms)))


def _launch_bwd(fn, args, k, g: Geometry, interp: bool, device, **kw) -> None:
    """The backward's grid: (row chunks, out-channel blocks, groups x channels per group), each
    program R row tiles long, R as large as keeps about 8 programs per SM (at most 64 tiles)."""
    bm, bn, warps = _block(BWD_BLOCK, g, interp)
    rows = g.batch * g.positions
    tiles, nob, chans = triton.cdiv(rows, bm), triton.cdiv(g.cout_per_group, bn), g.groups * g.cin_per_group
    sms = 1 if interp else tuning.sm_count(device)  # interpreted (tests): chunks of several tiles
    r = chunk_tiles(tiles, nob, chans, sms)
    fold = k["FOLD"] or chans > 65535 or nob > 65535
    grid = tuning.fold((triton.cdiv(rows, r * bm), nob, chans), fold)
    fn[grid](*args, rows, r * bm, **dict(k, FOLD=fold), **kw, BLOCK_M=bm, BLOCK_N=bn,
             T_P=1 << max(0, (g.taps - 1).bit_length()), num_warps=warps)


def _prepare(g: Geometry, wts) -> tuple:
    """(interpreting, padding in the kernel, constexprs, full weight shape, weights in the forward
    layout (G, CG * T, OG)): ignore padding by masked loads, other modes padded by torch (the
    kernels' loads then need no masks)."""
    from .function import _FWD_LAYOUT, _layout_view, _w_layout, consts
    in_pad = g.padding_mode == "ignore"
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
            _launch_bwd(mod._bwd2, (xkc, *wf, gy.contiguous(), gx, *gw), k, g, interp, x.device,
                        OUTER_MEAN=reduce[1] == "mean", NEED_X=bool(need_x))
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
