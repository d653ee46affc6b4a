"""Gluon backward kernels of sum-type reductions (sum, mean): the input gradient and the weights'.

The portable backward kernels are outer products over 1-d loads, like the portable forward, with
the same two barriers per step (measured on an H100 at N16 C64 O64 56x56, adder: weight gradient
1.35 ms, input gradient 0.95 ms; the generic gradient code is ~10.5 instructions per tap, a floor of
~0.6 ms each at the CUDA-core rate). With gradcode terms, offsets without runtime terms and a
register cap, the weight gradient here took 0.80 ms against the portable 1.25, the input gradient
0.63 against 0.575. Nsight Compute then showed both backward kernels limited by the ALU pipe
(75-80% busy: the sign term's compares and selects; that pipe has half the FMA pipe's rate), so
|x - w|-type terms accumulate by predicated adds (gradcode.branches, _sgn_acc): weight gradient
0.73 ms, input gradient 0.49 (portable 0.575). By default (settings.gluon_bwd="auto") the weight
gradient of one-weight ops and the input gradient where those adds apply run here; "1" runs both
for every sum-type op, "0" neither. `python -m lambdaconv.bench sass --kernel gw` counts their loops. Here:

- _bwd_x_gluon: gx[m, c] = sum over (tap t, out channel o) of gs[m, o, t] * d op/dx(x[m, c], w[o, c, t]),
  an implicit GEMM laid out as the forward (3-D layout [BLOCK_M, BLOCK_K, BLOCK_C], K = out
  channels wholly per thread): the x tile is loaded once, each step loads a [BLOCK_M, BLOCK_K] slice
  of the upstream gradient and a [BLOCK_K, BLOCK_C] slice of the weights. Stride 1 only; the
  upstream gradient comes zero-padded by torch to the full-convolution size, so no load is masked.
- _bwd_w_gluon: gw[o, c] of tap t = sum over rows m of gs[m, o] * d op/dw(x[m, c], w[o, c]). Lanes
  run along the rows (coalesced loads of x and of the gradient), each thread keeps its own
  [TO, TC] partial sums for its rows, and the rows are reduced across lanes once at the end. Splits
  of the rows write separate slabs that torch sums, as the portable kernel does.

The per-tap term gs * partial is gradcode.term's, as in the portable kernels (a select drops
missing taps only where the partial may be inf/NaN). Anything the kernels do not cover returns None from source() and runs portable.
"""
from __future__ import annotations


from ... import settings
from . import gradcode, tuning
from .launch import launch as fast_launch
from . import templates as T
from .codegen import GluonPrinter, Unprintable, depends, emit, fill, lines
from .gluon import GLUON_HEADER, _indent

BWD_X = '''

@gluon.jit
def _bwd_x_gluon(
    x_ptr,  # kernel input (N, C, ID, IH, IW), contiguous
$W_ARGS
    gsp_ptr,  # fp32 (N, O, ID + (KD-1)*DD, IH + (KH-1)*DH, IW + (KW-1)*DW): gs zero-padded (full conv)
    fin_ptr,  # fp32 scalar, the sum of gs: finite when gs has no inf / NaN (_sgn_acc2 applies then)
    gx_ptr,  # gradient of the kernel input, (N, C, ID, IH, IW)
    n_rows,  # N * ID * IH * IW
$GEOMETRY
    BLOCK_M: gl.constexpr, BLOCK_C: gl.constexpr, BLOCK_K: gl.constexpr,  # BLOCK_K divides OG
    L3: gl.constexpr,  # BlockedLayout over [BLOCK_M, BLOCK_K, BLOCK_C], BLOCK_K wholly per thread
):
    LG: gl.constexpr = gl.SliceLayout(2, L3)  # [BLOCK_M, BLOCK_K] upstream gradient
    LW: gl.constexpr = gl.SliceLayout(0, L3)  # [BLOCK_K, BLOCK_C] weights
    LX: gl.constexpr = gl.SliceLayout(1, L3)  # [BLOCK_M, BLOCK_C] x and the accumulator
    T: gl.constexpr = KD * KH * KW
    S: gl.constexpr = ID * IH * IW
    GD: gl.constexpr = ID + (KD - 1) * DD
    GH: gl.constexpr = IH + (KH - 1) * DH
    GW: gl.constexpr = IW + (KW - 1) * DW
    GP: gl.constexpr = GD * GH * GW
    pid_m, pid_c, g = _pid3(gl.cdiv(n_rows, BLOCK_M), (CG + BLOCK_C - 1) // BLOCK_C, FOLD, I64)
    # x tile and the output: rows past the end / channels past the end are clamped for the loads
    offs_mx = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LX))
    offs_cx = pid_c * BLOCK_C + gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, LX))
    mx = gl.minimum(offs_mx, n_rows - 1)
    cx = gl.minimum(offs_cx, CG - 1)
    x_off = gl.expand_dims((mx // S).to(gl.int64) * (C * S) + g * (CG * S) + mx % S, 1) + gl.expand_dims(cx * S, 0)
    xv = gl.expand_dims(gl.load(x_ptr + x_off).to(gl.float32), 1)  # [BLOCK_M, 1, BLOCK_C]
    # gradient rows: input position i reads output q = i + pad - k * dil, at i + (K - 1 - k) * dil in gsp
    offs_mg = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LG))
    mg = gl.minimum(offs_mg, n_rows - 1)
    i = mg % S
    g_row = (mg // S).to(gl.int64) * (O * GP) + g * (OG * GP) + ((i // (IH * IW)) * (GH * GW) + ((i // IW) % IH) * GW
                                                                  + i % IW)
    offs_kg = _wide(gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, LG)), I64)
    g_off = gl.expand_dims(g_row, 1) + gl.expand_dims(offs_kg * GP, 0)
    offs_kw = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, LW))
    offs_cw = pid_c * BLOCK_C + gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, LW))
    if CG % BLOCK_C != 0:  # clamped only where needed: a clamp hides the contiguity (no 16-byte loads)
        offs_cw = gl.minimum(offs_cw, CG - 1)
    w_off = g * (T * OG * CG) + gl.expand_dims(offs_kw * CG, 1) + gl.expand_dims(offs_cw, 0)  # (G, T, OG, CG)
$ACC_INIT
    # out-channel blocks outer, the taps unrolled inside: each tap's shift is a constant, so the
    # loads take immediate offsets and ptxas issues the next tap's loads during this tap's arithmetic
$MAIN_LOOP    offs_c = gl.expand_dims(offs_cx, 0)
    mask = gl.expand_dims(offs_mx < n_rows, 1) & (offs_c < CG)
    gl.store(gx_ptr + x_off, acc.to(gx_ptr.dtype.element_ty), mask=mask)
'''
LOOP_X = '''\
    for o0 in range(0, OG, BLOCK_K):
        g_base = gsp_ptr + (g_off + _wide(o0, I64) * GP)
        w_base = w_off + o0 * CG
        for t in gl.static_range(T):
            gs = gl.expand_dims(gl.load(g_base + ((KD - 1 - t // (KH * KW)) * DD * (GH * GW)
                                                  + (KH - 1 - (t // KW) % KH) * DH * GW
                                                  + (KW - 1 - t % KW) * DW)), 2)  # [BLOCK_M, BLOCK_K, 1]
$W_LOADS
$OP_CODE
$ACC_STEP
$ACC_FINISH
'''

W_ARG_B = "    w{i}_ptr,  # weight {name!r}, (G, T, OG, CG)"
W_LOAD_X = ("            w_{i} = gl.expand_dims(gl.load(w{i}_ptr + (w_base + t * (OG * CG))).to(gl.float32), 0)")

BWD_W = '''

@gluon.jit
def _bwd_w_gluon(
    x_ptr,  # input padded by torch (N, C, ID, IH, IW) (PD = PH = PW = 0), contiguous
$W_ARGS
    gs_ptr,  # fp32 (N, O, P): upstream gradient times the reduction's weight
    fin_ptr,  # fp32 scalar, the sum of gs: finite when gs has no inf / NaN (_sgn_acc2 applies then)
$GW_ARGS
    n_rows,  # N * P
    chunk,  # rows of the N * P range summed by one split
$GEOMETRY
    BLOCK_O: gl.constexpr, BLOCK_R: gl.constexpr, BLOCK_C: gl.constexpr, ROWS_U: gl.constexpr,
    L3: gl.constexpr,  # BlockedLayout over [BLOCK_O, BLOCK_R, BLOCK_C], lanes along the rows R
):
    LG: gl.constexpr = gl.SliceLayout(2, L3)  # [BLOCK_O, BLOCK_R] upstream gradient
    LX: gl.constexpr = gl.SliceLayout(0, L3)  # [BLOCK_R, BLOCK_C] x
    LW: gl.constexpr = gl.SliceLayout(1, L3)  # [BLOCK_O, BLOCK_C] weights and the result
    T: gl.constexpr = KD * KH * KW
    P: gl.constexpr = OD * OH * OW
    S: gl.constexpr = ID * IH * IW
    NT: gl.constexpr = (OG + BLOCK_O - 1) // BLOCK_O
    tile, gt, split = _pid3(NT * ((CG + BLOCK_C - 1) // BLOCK_C), (C // CG) * T, FOLD, I64)
    ob = tile % NT
    cb = tile // NT
    g = gt // T
    t = gt % T
    offs_ow = ob * BLOCK_O + gl.arange(0, BLOCK_O, layout=gl.SliceLayout(1, LW))
    offs_cw = cb * BLOCK_C + gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, LW))
    w_off = gl.expand_dims(((g * T + t) * OG + gl.minimum(offs_ow, OG - 1)) * CG, 1) + \\
        gl.expand_dims(gl.minimum(offs_cw, CG - 1), 0)
$W_LOADS
    tap = (t // (KH * KW)) * DD * (IH * IW) + ((t // KW) % KH) * DH * IW + (t % KW) * DW
    offs_rx = gl.arange(0, BLOCK_R, layout=gl.SliceLayout(1, LX))
    # Per-thread offsets are kept free of runtime values (those go into the int64 row part): a
    # runtime term inside the int32 offsets, or a clamp, hides their constant stride from the
    # compiler, and each of a thread's channels then costs its own 64-bit address per row.
    cx = _wide(gl.arange(0, BLOCK_C, layout=gl.SliceLayout(0, LX)), I64)
    x_fix = g * (CG * S) + tap + cb * (BLOCK_C * S)
    if CG % BLOCK_C != 0:
        cx = gl.minimum(cb * BLOCK_C + cx, CG - 1)
        x_fix = g * (CG * S) + tap
    x_c = gl.expand_dims(cx * S, 0)
    offs_rg = gl.arange(0, BLOCK_R, layout=gl.SliceLayout(0, LG))
    og = _wide(gl.arange(0, BLOCK_O, layout=gl.SliceLayout(1, LG)), I64)
    g_fix = (g * OG + ob * BLOCK_O) * P
    if OG % BLOCK_O != 0:
        og = gl.minimum(ob * BLOCK_O + og, OG - 1)
        g_fix = g * OG * P
    g_o = gl.expand_dims(og * P, 1)
$GW_INIT
    m_start = split * chunk
    m_end = gl.minimum(m_start + chunk, n_rows)
    # ROWS_U blocks of rows per iteration, unrolled: their loads are issued together (more memory
    # requests in flight per warp than one block's; the kernel is latency-bound at 1 program per SM)
$MAIN_LOOP    mask = gl.expand_dims(offs_ow < OG, 1) & gl.expand_dims(offs_cw < CG, 0)
$GW_STORE
'''
LOOP_W = '''\
    for m0 in range(m_start, m_end, BLOCK_R * ROWS_U):
        for u in gl.static_range(ROWS_U):
            mr = gl.minimum(m0 + u * BLOCK_R + offs_rx, m_end - 1)  # tail rows re-read a real row; their gs is 0
            n = mr // P
            p = mr % P
            od = p // (OH * OW)
            oh = (p // OW) % OH
            ow = p % OW
            x_row = n.to(gl.int64) * (C * S) + (od * SD * (IH * IW) + oh * SH * IW + ow * SW + x_fix)
            xv = gl.expand_dims(gl.load(x_ptr + (gl.expand_dims(x_row, 1) + x_c)).to(gl.float32), 0)
            rg = m0 + u * BLOCK_R + offs_rg
            rc = gl.minimum(rg, m_end - 1)
            g_row = (rc // P).to(gl.int64) * (O * P) + (rc % P + g_fix)
            gs = gl.load(gs_ptr + (gl.expand_dims(g_row, 0) + g_o))
            # tail rows: a float 0/1 factor, not a broadcast boolean select (see templates.py)
            gs = gl.expand_dims(gs * gl.expand_dims(gl.where(rg < m_end, 1.0, 0.0), 0), 2)  # [BLOCK_O, BLOCK_R, 1]
$OP_CODE
$GW_ACC
'''

W_LOAD_W = "    w_{i} = gl.expand_dims(gl.load(w{i}_ptr + w_off).to(gl.float32), 1)  # [BLOCK_O, 1, BLOCK_C]"
GW_ARG = "    gw{i}_ptr,  # fp32 (SPLITS, G, T, OG, CG) partial gradient of weight {name!r}"
GW_INIT = "    gw_{i} = gl.zeros([BLOCK_O, BLOCK_R, BLOCK_C], gl.float32, L3)"
GW_ACC = "            gw_{i} += {term}"
GW_STORE = "    gl.store(gw{i}_ptr + split * (O * CG * T) + w_off, gl.sum(gw_{i}, axis=1), mask=mask)"


def _ok(exprs, need: str) -> bool:
    return all(depends(e, need) for e in exprs)


def _geometry() -> str:
    return T.GEOMETRY.rstrip("\n").replace("tl.constexpr", "gl.constexpr")


SGN_ACC = """

@gluon.jit
def _sgn_acc(acc, a, b, pa, pb, pc):
    # acc + (pa if a > b else pb if a < b else pc), see gradcode.branches
    return gl.inline_asm_elementwise("$PTX", "=f,0,f,f,f,f,f", [acc, a, b, pa, pb, pc],
                                     dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _sgn_acc2(acc, a, b, pa, pb):
    # acc + (pa if a > b else pb if a < b else 0): the ties' term is 0 when gs is finite
    return gl.inline_asm_elementwise("$PTX2", "=f,0,f,f,f,f", [acc, a, b, pa, pb],
                                     dtype=gl.float32, is_pure=True, pack=1)
"""


def sgn_enabled(kernel: str) -> bool:
    """The predicated sign accumulation (gradcode.branches) in the Gluon backward `kernel` ("x" or
    "w"). LAMBDACONV_GLUON_SGN: "1" both (default), "0" neither, "x" / "w" that kernel only: the
    plain selects otherwise (comparisons, sweeps)."""
    v = settings.get().gluon_sgn
    return v == "1" or v == kernel


_X_SGN: dict = {}


def x_uses_sgn(spec) -> bool:
    """True if the Gluon input gradient of spec accumulates by predicated sign adds (then it beats
    the portable kernel: the default picks it)."""
    if not sgn_enabled("x"):
        return False
    v = _X_SGN.get(spec)
    if v is None:
        v = _X_SGN[spec] = gradcode.branches(gradcode.term(spec.partials()[0])[0]) is not None
    return v


def _emit_terms(terms, names, sgn: bool):
    """(code, outs, parts) for the terms, a part per term: ("sgn", the 5 names of _sgn_acc's
    operands, whether the ties' operand is 0 for finite gs) where gradcode.branches applies, else
    ("term", the term's source, False). Raises codegen.Unprintable (an op needs a helper)."""
    exprs, spans = [], []
    for t, sel in terms:
        br = gradcode.branches(t) if sgn and not sel else None
        spans.append((len(exprs), br is not None and gradcode.zero_if_finite(br[4]), br is not None, sel))
        exprs += list(br) if br is not None else [t]
    code, outs = emit(exprs, "xv", {**{n: f"w_{i}" for i, n in enumerate(names)}, gradcode.GS_NAME: "gs"}, 12,
                      printer=GluonPrinter)
    parts = []
    for j, zero, is_sgn, sel in spans:
        ops = outs[j:j + 5]
        if is_sgn and all(o.isidentifier() for o in ops):
            parts.append(("sgn", ops, zero))
        elif is_sgn:  # a constant operand (not seen in practice): the where form, printed here
            return _emit_terms(terms, names, False)
        else:
            parts.append(("term", gradcode.value(outs[j], sel, "gl"), False))
    return code, outs, parts


def _two_loops(loop: str, swaps) -> str:
    """The $MAIN_LOOP hook: the main loop as written, or, with swaps, in two versions: each (exact,
    fast) of swaps replaced (_sgn_acc2: ties add nothing) when the sum of gs is finite, else as
    written (exact for inf / NaN gradients too). No swaps: some sign term whose tie value is not 0
    for finite gs, or none."""
    if not swaps:
        return loop
    fast = loop
    for exact, quick in swaps:
        assert exact in fast
        fast = fast.replace(exact, quick)
    return "    fin = gl.load(fin_ptr)\n    if fin - fin == 0.0:\n" + _indent(fast, 4) + "\n    else:\n" + _indent(loop, 4) + "\n"


def _sgn_calls(acc: str, ops, zero: bool):
    """(exact call, fast call or None) accumulating into acc."""
    return (f"{acc} = _sgn_acc({acc}, {', '.join(ops)})",
            f"{acc} = _sgn_acc2({acc}, {', '.join(ops[:4])})" if zero else None)


def _swaps(calls):
    """The (exact, fast) replacements, or none unless every call has a fast form."""
    return list(calls) if calls and all(f is not None for _, f in calls) else []


def _head(spec, what: str, parts) -> str:
    text = fill(GLUON_HEADER, OP=str(spec.expr).replace("\n", " "), REDUCE=what)
    if any(p[0] == "sgn" for p in parts):
        text += fill(SGN_ACC, PTX=gradcode.SGN_ACC_PTX, PTX2=gradcode.SGN_ACC2_PTX)
    return text


def source_x(spec, sgn: bool = True):
    """_bwd_x_gluon text for a sum-type op, or None (its d/dx must depend on a weight)."""
    names = spec.weight_names
    px = spec.partials()[0]
    if not _ok([px], "weight"):
        return None
    try:
        code, outs, parts = _emit_terms([gradcode.term(px)], names, sgn)
    except Unprintable:
        return None
    kind, arg, zero = parts[0]
    calls = []
    if kind == "sgn":  # per-thread partial sums for each of its BLOCK_K out channels, summed at the end
        calls = [_sgn_calls("acc3", arg, zero)]
        acc = ("    acc3 = gl.zeros([BLOCK_M, BLOCK_K, BLOCK_C], gl.float32, L3)", " " * 12 + calls[0][0],
               "    acc = gl.sum(acc3, axis=1)")
    else:
        acc = ("    acc = gl.zeros([BLOCK_M, BLOCK_C], gl.float32, LX)", f"            acc += gl.sum({arg}, axis=1)", "")
    loop = fill(LOOP_X, W_LOADS=lines(W_LOAD_X, names), OP_CODE=code, ACC_STEP=acc[1], ACC_FINISH=acc[2])
    text = fill(BWD_X, W_ARGS=lines(W_ARG_B, names), GEOMETRY=_geometry(), ACC_INIT=acc[0],
                MAIN_LOOP=_two_loops(loop, _swaps(calls)))
    return _head(spec, "sum (input gradient)", parts) + text


def source_w(spec, need_w, sgn: bool = True):
    """_bwd_w_gluon text for the weights in need_w, or None (each d/dw must depend on x)."""
    names = spec.weight_names
    wanted = [p for p, k in zip(spec.partials()[1:], need_w) if k]
    gw_names = [n for n, k in zip(names, need_w) if k]
    if not wanted:
        return None
    if not _ok(wanted, "input"):
        return None
    try:
        code, outs, parts = _emit_terms([gradcode.term(p) for p in wanted], names, sgn)
    except Unprintable:
        return None
    calls = {i: _sgn_calls(f"gw_{i}", a, z) for i, (k, a, z) in enumerate(parts) if k == "sgn"}
    acc = "\n".join(calls[i][0] if i in calls else GW_ACC.strip().format(i=i, term=a)
                    for i, (k, a, _) in enumerate(parts))
    # every weight's term a sign term: the fast loop when gs is finite
    swaps = _swaps(list(calls.values())) if len(calls) == len(parts) else []
    loop = fill(LOOP_W, OP_CODE=code, GW_ACC=_indent(acc, 12))
    text = fill(BWD_W, W_ARGS=lines(W_ARG_B, names), GEOMETRY=_geometry(), GW_ARGS=lines(GW_ARG, gw_names),
                W_LOADS=lines(W_LOAD_W, names), GW_INIT=lines(GW_INIT.strip(), gw_names, 4),
                GW_STORE=lines(GW_STORE.strip(), gw_names, 4), MAIN_LOOP=_two_loops(loop, swaps))
    return _head(spec, "sum (weight gradient)", parts) + text


SGN_DEFAULT = "1"  # where the predicated sign accumulation is used (sgn_enabled)
GW_PER_SM = 32  # weight-gradient programs per SM (splits of the rows)
# On the H100 (adder, N16 C64 O64 56x56, a sweep of these settings): 1.08-1.12 ms before
# the offsets were freed of runtime terms; then 0.911 with 2 row blocks per iteration, 0.821 capped at
# 128 registers (2 programs per SM instead of 1), 0.804 with 1 row block capped. The cap is for one
# weight only: two weights' tiles and sums alone take 128 registers.
GW_TILE = "4,8,4,2"  # TO, TC, WO, WC of the weight gradient (grad_w)
GW_ROWS_U = 1  # blocks of rows per loop iteration (settings.gluon_gw_u for sweeps)
GW_MAXNREG = 128  # register cap of the one-weight weight gradient (settings.gluon_gw_maxnreg)

# (BLOCK_M, BLOCK_C, BLOCK_K, per thread M, C, lanes M, C, warps M, C, -): the forward's layout
X_CONFIG = (64, 64, 2, 4, 8, 4, 8, 4, 1, 0)


def _call(mod, name, grid, args, kw) -> bool:
    from . import gluon
    if mod is None or mod in gluon._failed:
        return False
    try:
        fast_launch(getattr(mod, name), grid, args, kw)
    except Exception as err:  # no Gluon here, an API it lacks, a GPU it cannot target
        if settings.get().gluon == "strict":
            raise
        gluon._failed.add(mod)
        gluon._warn(err)
        return False
    return True


def finite_flag(gs):
    """The sum of gs as a 0-d tensor (no sync): finite exactly when gs has no inf / NaN (a sum of
    finite values that overflows only selects the exact loop). The kernels read it to pick their
    loop (_two_loops)."""
    return gs.sum()


def grad_x(spec, xk, wb, gs, gxk, k: dict, rows: int, groups: int, fin=None) -> bool:
    """gx through _bwd_x_gluon (stride 1); False: not applicable, run the portable kernel.
    fin: finite_flag(gs), where the caller has it."""
    import torch.nn.functional as F

    from . import gluon
    if any(k[s] != 1 for s in ("SD", "SH", "SW")) or k["IGNORE"]:
        return False
    sgn = sgn_enabled("x")
    mod = gluon.load_once((spec, "bwd_x", sgn), lambda: source_x(spec, sgn))
    if mod is None:
        return False
    # zero-pad gs to the full-convolution size: output q = i + pad - k * dil sits at i + (K-1-k) * dil
    pads = []
    for d in ("W", "H", "D"):
        lo = (k["K" + d] - 1) * k["D" + d] - k["P" + d]
        full = k["I" + d] + (k["K" + d] - 1) * k["D" + d]
        pads += [lo, full - k["O" + d] - lo]
    n = gs.shape[0]
    gsp = F.pad(gs.reshape(n, gs.shape[1], k["OD"], k["OH"], k["OW"]), pads).contiguous()
    bm, bc, bk = X_CONFIG[:3]
    bk = settings.get().gluon_gx_bk or bk  # out channels per thread and step (sweeps)
    while k["OG"] % bk:
        bk //= 2
    cfg = (bm, bc, bk) + X_CONFIG[3:]
    grid = tuning.fold(((rows + bm - 1) // bm, (k["CG"] + bc - 1) // bc, groups), k["FOLD"])
    fin = finite_flag(gs) if fin is None else fin
    return _call(mod, "_bwd_x_gluon", grid, (xk, *wb, gsp, fin, gxk, rows),
                 dict(k, BLOCK_M=bm, BLOCK_C=bc, BLOCK_K=bk, L3=gluon.layout(cfg), num_warps=cfg[7] * cfg[8],
                      **_maxnreg("GX")))


def _maxnreg(which: str, default=None) -> dict:
    """{"maxnreg": n}: LAMBDACONV_GLUON_<which>_MAXNREG ("0": no cap), else the default (None: no cap)."""
    v = getattr(settings.get(), f"gluon_{which.lower()}_maxnreg")
    v = default if v is None else (int(v) or None)
    return {"maxnreg": v} if v else {}


def grad_w(spec, need_w, xp, wb, gs, k: dict, rows: int, groups: int, sms: int, fin=None):
    """Weight-gradient slabs through _bwd_w_gluon; None: not applicable (run the portable kernel).
    xp is the input padded by torch and k its geometry (no in-kernel padding). Returns the slabs
    (SPLITS, G, T, OG, CG) of each wanted weight."""
    import torch

    from . import gluon
    if k["IGNORE"]:
        return None
    sgn = sgn_enabled("w")
    mod = gluon.load_once((spec, "bwd_w", tuple(need_w), sgn), lambda: source_w(spec, need_w, sgn))
    if mod is None:
        return None
    from triton.experimental.gluon import language as gl
    n_w = sum(1 for v in need_w if v)
    # [TO, TC] partial sums per thread and weight, warps along O and C (env "TO,TC,WO,WC" for sweeps)
    s = settings.get()
    to, tc, wo, wc = (int(v) for v in (s.gluon_gw_tile or GW_TILE).split(","))
    rows_u = s.gluon_gw_u or GW_ROWS_U
    bo, bc, br = to * wo, tc * wc, 32
    layout = gl.BlockedLayout([to, 1, tc], [1, 32, 1], [wo, 1, wc], [2, 1, 0])
    og, cg, taps = k["OG"], k["CG"], k["KD"] * k["KH"] * k["KW"]
    tiles = ((og + bo - 1) // bo) * ((cg + bc - 1) // bc)
    # Many programs per SM: with ~1 wave, the programs of a partial second wave ran alone and the
    # kernel took twice its work (1152 programs: 1.12 ms for adder).
    target = (s.gluon_gw_per_sm or GW_PER_SM) * sms
    splits = max(1, min((target + tiles * groups * taps - 1) // (tiles * groups * taps), (rows + 4 * br - 1) // (4 * br),
                        tuning.max_splits(groups * taps * og * cg, k["I64"])))
    chunk = (rows + splits - 1) // splits
    slabs = [torch.empty((splits, groups, taps, og, cg), dtype=torch.float32, device=xp.device) for _ in range(n_w)]
    fin = finite_flag(gs) if fin is None else fin
    grid = tuning.fold((tiles, groups * taps, splits), k["FOLD"])
    ok = _call(mod, "_bwd_w_gluon", grid, (xp, *wb, gs, fin, *slabs, rows, chunk),
               dict(k, BLOCK_O=bo, BLOCK_R=br, BLOCK_C=bc, ROWS_U=rows_u, L3=layout, num_warps=wo * wc,
                                **_maxnreg("GW", GW_MAXNREG if n_w == 1 and len(wb) == 1 else None)))
    return slabs if ok else None
