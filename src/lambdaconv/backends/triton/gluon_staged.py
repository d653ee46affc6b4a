"""The Gluon forward with both operands staged through shared memory (SGEMM style).

gluon.py's register-only kernel loads each thread's [TM, BLOCK_K] x slice and [BLOCK_K, TN]
weight slice straight from global memory: 4 x 8 outputs per thread, and with 64 accumulators the
[TM, BLOCK_K, TN] tap tensor spilled. It stopped at ~0.187 ms for the adder at the
first bar shape (60% of the CUDA-core floor, with the padding kernel 56%), long-scoreboard stalls
on its L1 loads the main cost (Nsight Compute).

Here a K step (KS * BLOCK_K in-channels of one tap) is copied by all threads of the program into
shared memory with coalesced loads, double buffered (one barrier per step: the copy of step s+1
is loaded into registers before step s's taps and stored after them), and each thread then runs
BLOCK_K rank-1 updates of a [TM, TN] accumulator tile from its TM x values and TN weights, read
with vector shared loads. Per k: TM * TN taps (2 instructions each for adder / max-plus) against
two or three shared loads; the copy's global loads, stores and barrier are once per BLOCK_K k's
(`python -m lambdaconv.bench sass`: adder 2.31 instructions per tap at 4 x 8, 72 registers, no spills). Zero padding is done
here: a tap outside the input is a masked load of 0 (one test per row and K step), so the input
is not padded first. K slices (KS > 1): KS warp groups take different channels of a step and
their accumulators are summed at the end, more warps where the grid has few programs (N16 C256
O256 14x14: 392 programs of 2 warps).

Used as tuner candidates next to gluon.py's configs (K_MODE 4), for the same cases (sum / mean /
max / min without saved winners, a padded input, no helper functions).
"""
from __future__ import annotations

import functools

from ... import reductions
from .codegen import OUTPUT_TILE, fill, indent as _indent, lines

K_MODE = 4  # the last element of a staged config in gluon.CONFIGS

KERNEL = '''

@gluon.jit
def _fwd_staged(
    x_ptr,  # input (N, C, ID, IH, IW), contiguous, any float dtype; zero-padded here by PD, PH, PW
$W_ARGS
    bias_ptr,  # (O,) added after the reduction, read only when HAS_BIAS
    y_ptr,  # output (N, O, OD, OH, OW), contiguous, in the output dtype
    aux_ptr,  # unused (no saved winners here; the argument list is the register kernel's)
    n_rows,  # N * OD * OH * OW
$GEOMETRY
    HAS_BIAS: gl.constexpr, SAVE_AUX: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,  # KS * BLOCK_K divides CG
    KS: gl.constexpr,  # K slices: warp groups that each take BLOCK_K of a step's KS * BLOCK_K channels
    LA: gl.constexpr,  # BlockedLayout over [KS, BLOCK_M, BLOCK_N]: the accumulators, TM x TN per thread
    LX: gl.constexpr,  # BlockedLayout over [KS, BLOCK_K, BLOCK_M]: the global loads of a step's x
    LW: gl.constexpr,  # BlockedLayout over [KS, BLOCK_K, BLOCK_N]: the global loads of a step's weights
    SMX: gl.constexpr,  # shared layout of the x stages [2, KS, BLOCK_K, BLOCK_M]
    SMW: gl.constexpr,  # shared layout of the weight stages [2, KS, BLOCK_K, BLOCK_N]
):
    T: gl.constexpr = KD * KH * KW
    P: gl.constexpr = OD * OH * OW
    S: gl.constexpr = ID * IH * IW
    NC: gl.constexpr = CG // (KS * BLOCK_K)  # channel blocks per tap
    NS: gl.constexpr = T * NC  # K steps
    CT: gl.constexpr = $COMPUTE
    pid_m, pid_n, g = _pid3(gl.cdiv(n_rows, BLOCK_M), (OG + BLOCK_N - 1) // BLOCK_N, FOLD, I64)
    # x of a step: [KS, BLOCK_K, BLOCK_M], rows past the end re-read the last row (never stored)
    LXM: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(0, LX))
    offs_m = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=LXM)
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, gl.SliceLayout(0, LX)))
    offs_s = gl.arange(0, KS, layout=gl.SliceLayout(1, gl.SliceLayout(2, LX)))
    chan = _wide(gl.expand_dims(gl.expand_dims(offs_s * BLOCK_K, 1), 2) + gl.expand_dims(gl.expand_dims(offs_k, 1), 0),
                 I64)
    m_ld = gl.minimum(offs_m, n_rows - 1)
    n = m_ld // P
    p = m_ld % P
    # the window's first element; with zero padding in the kernel (PD, PH, PW > 0) it may lie
    # outside the input: loads are masked by the tap's position (one test per row and K step)
    wd = (p // (OH * OW)) * SD - PD
    wh = ((p // OW) % OH) * SH - PH
    ww = (p % OW) * SW - PW
    x_row = n.to(gl.int64) * (C * S) + g * (CG * S) + (wd * (IH * IW) + wh * IW + ww)
    a_off = chan * S + gl.expand_dims(gl.expand_dims(x_row, 0), 0)
    # weights (G, CG * T, OG): row c * T + t; out channels past the end re-read the last one
    offs_kw = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, gl.SliceLayout(0, LW)))
    offs_sw = gl.arange(0, KS, layout=gl.SliceLayout(1, gl.SliceLayout(2, LW)))
    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, gl.SliceLayout(0, LW)))
    if OG % BLOCK_N != 0:
        offs_n = gl.minimum(offs_n, OG - 1)
    chan_w = _wide(gl.expand_dims(gl.expand_dims(offs_sw * BLOCK_K, 1), 2) + gl.expand_dims(gl.expand_dims(offs_kw, 1), 0),
                   I64)
    b_off = g * (CG * T * OG) + chan_w * (T * OG) + gl.expand_dims(gl.expand_dims(offs_n, 0), 0)
    xs = gl.allocate_shared_memory(x_ptr.dtype.element_ty, [2, KS, BLOCK_K, BLOCK_M], SMX)
$W_ALLOC
    if PD + PH + PW > 0:
        ok = (wd >= 0) & (wd < ID) & (wh >= 0) & (wh < IH) & (ww >= 0) & (ww < IW)  # tap 0
        a_first = gl.load(x_ptr + a_off, mask=gl.expand_dims(gl.expand_dims(ok, 0), 0), other=0.0)
    else:
        a_first = gl.load(x_ptr + a_off)
    xs.index(0).store(a_first)
$W_STORE0
    $BARRIER
$INIT
    for s in range(NS):
        # the next step's copy, loaded now so that its latency hides behind this step's taps
        sn = gl.minimum(_wide(s, I64) + 1, NS - 1)  # the last step re-loads itself (stored, never read)
        tn = sn // NC
        cn = (sn % NC) * (KS * BLOCK_K)
        td = (tn // (KH * KW)) * DD
        th = ((tn // KW) % KH) * DH
        tw = (tn % KW) * DW
        tap = td * (IH * IW) + th * IW + tw
        if PD + PH + PW > 0:
            ok = ((wd + td >= 0) & (wd + td < ID) & (wh + th >= 0) & (wh + th < IH) & (ww + tw >= 0)
                  & (ww + tw < IW))
            a_nxt = gl.load(x_ptr + (a_off + (tap + cn * S)), mask=gl.expand_dims(gl.expand_dims(ok, 0), 0),
                            other=0.0)
        else:
            a_nxt = gl.load(x_ptr + (a_off + (tap + cn * S)))
$W_NEXT
        xb = xs.index(s % 2)
$W_BUF
        for k in gl.static_range(BLOCK_K):
            xv = xb.slice(k, 1, 1).permute([0, 2, 1]).load(LA).to(CT)  # [KS, BLOCK_M, 1]: k's column of x
$W_READ
$OP_CODE
            v = $OP_OUT
$COMBINE
$STEP_END
        xs.index((s + 1) % 2).store(a_nxt)
$W_STORE
        $BARRIER
$FINISH
    LC: gl.constexpr = gl.SliceLayout(0, LA)
$OUTPUT_TILE
    if HAS_BIAS:
        res += gl.expand_dims(gl.load(bias_ptr + g * OG + offs_nc, mask=offs_nc < OG, other=0.0).to(gl.float32), 0)
    gl.store(y_ptr + y_off, res.to(y_ptr.dtype.element_ty), mask=mask)
'''

# a reduction's code here: reductions.StagedCode
# half-precision sums: a K step's BLOCK_K taps summed in half precision (packed, two per
# instruction), the running sum in float32 (what gluon.py's kernel does per step)
HALF_SUM = ("if k == 0:\n    part = v\nelse:\n    part = part + v", "        acc += part.to(gl.float32)")


def source(names, reduce: str, compute: str, code: str, op_out: str, geometry: str, finish_extra: str) -> str:
    """The _fwd_staged kernel's text (appended to gluon.py's module, which has the imports and the
    NaN-propagating max / min helpers). code / op_out: the op's Gluon code over xv and w_i."""
    from triton.experimental.gluon import language as gl
    rec = reductions.get(reduce)
    init, combine, step_end, finish = rec.code["gluon_staged"]
    if rec.linear and compute != "tl.float32":
        combine, step_end = HALF_SUM
    barrier = "gl.barrier()" if hasattr(gl, "barrier") else "gl.thread_barrier()"  # renamed after triton 3.6
    return fill(KERNEL, BARRIER=barrier, OUTPUT_TILE=OUTPUT_TILE.rstrip("\n"),
                W_ARGS=lines("    w{i}_ptr,  # weight {name!r}, (G, CG * T, OG)", names), GEOMETRY=geometry,
                W_ALLOC=lines("w{i}s = gl.allocate_shared_memory(w{i}_ptr.dtype.element_ty, [2, KS, BLOCK_K, BLOCK_N], SMW)",
                              names, 4),
                W_STORE0=lines("w{i}s.index(0).store(gl.load(w{i}_ptr + b_off))", names, 4),
                W_NEXT=lines("w{i}_nxt = gl.load(w{i}_ptr + (b_off + (tn * OG + cn * (T * OG))))", names, 8),
                W_BUF=lines("w{i}b = w{i}s.index(s % 2)", names, 8),
                W_READ=lines("w_{i} = w{i}b.slice(k, 1, 1).load(LA).to(CT)", names, 12),
                W_STORE=lines("w{i}s.index((s + 1) % 2).store(w{i}_nxt)", names, 8),
                STEP_END=step_end, INIT=init, FINISH=finish + finish_extra, COMPUTE=compute.replace("tl.", "gl."),
                OP_CODE=_indent(code, 12), OP_OUT=op_out, COMBINE=_indent(combine, 12))


@functools.lru_cache(maxsize=None)
def layouts(cfg) -> dict:
    """The constexprs of a staged config (bm, bn, bk, tm, tn, pm, pn, wm, wn, ks, 4): KS and layouts."""
    from triton.experimental.gluon import language as gl
    bm, bn, bk, tm, tn, pm, pn, wm, wn, ks, _ = cfg
    assert bm == tm * pm * wm and bn == tn * pn * wn and pm * pn == 32, cfg
    nw = wm * wn  # warps per K slice
    # global loads: x along m (coalesced, consecutive output positions), weights 4 wide along n;
    # each K slice's warps load that slice's channels
    vec = min(4, bn)
    ln = min(32, bn // vec)
    return dict(KS=ks, LA=gl.BlockedLayout([1, tm, tn], [1, pm, pn], [ks, wm, wn], [2, 1, 0]),
                LX=gl.BlockedLayout([1, 1, 1], [1, 1, 32], [ks, nw, 1], [2, 1, 0]),
                LW=gl.BlockedLayout([1, 1, vec], [1, 32 // ln, ln], [ks, nw, 1], [2, 1, 0]),
                SMX=gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0]),
                SMW=gl.SwizzledSharedLayout(1, 1, 1, [2, 1, 0]))


def is_staged(cfg) -> bool:
    return cfg[-1] == K_MODE


def warps(cfg) -> int:
    return cfg[7] * cfg[8] * cfg[9]
