"""`python -m lambdaconv.bench sass`: instructions per tap of a generated kernel's hot loops, no GPU needed.

Compiles a generated Gluon kernel (forward, input gradient, weight gradient) for sm_90 with
triton.compile and an explicit target, disassembles it with the nvdisasm that ships with triton,
finds the innermost loops (a backward branch to a label) and counts their instructions by opcode
class. Divided by the taps one loop iteration computes, that is instructions per tap: the number
the CUDA-core floor is counted in (docs/perf_notes.md). Needs triton with Gluon (not CUDA). The
geometry is N16 C64 O64 56x56 k3 pad 1. Rows: one per loop (no time; the counts in the note).

    python -m lambdaconv.bench sass --op adder --kernel gw          # counts of each loop
    python -m lambdaconv.bench sass --op adder --kernel fwd --dump  # and the loop's SASS
"""
from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile

from . import study

GEOM = dict(C=64, CG=64, O=64, OG=64, ID=1, IH=58, IW=58, OD=1, OH=56, OW=56, KD=1, KH=3, KW=3,
            SD=1, SH=1, SW=1, DD=1, DH=1, DW=1, PD=0, PH=0, PW=0, IGNORE=False, I64=False, FOLD=False)


def _compile(fn, consts: dict, num_warps: int, dtype: str = "fp32", maxnreg=None) -> tuple:
    """(SASS text, resource usage) of fn compiled for sm_90, every non-constexpr pointer of `dtype`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction

    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + ("fp32" if name.startswith(("gs", "gw", "gx", "aux")) else dtype)
            if name == "aux_ptr":
                sig[name] = "*i32"
        else:
            sig[name] = "i32"
    for name in ("gy_ptr",):  # the two-level backward's upstream gradient (fp32 here)
        if name in sig:
            sig[name] = "*fp32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n.endswith("_ptr")}
    src = (GluonASTSource if isinstance(fn, GluonJITFunction) else ASTSource)(fn, sig, consts, attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "maxnreg": maxnreg})
    cubin = k.asm["cubin"]
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool.replace("nvdisasm", "cuobjdump"), "-res-usage", f.name], capture_output=True,
                               text=True).stdout
        res = f"warps {num_warps}, " + " ".join(re.findall(r"REG:\d+|STACK:\d+|SHARED:\d+|LOCAL:\d+", usage))
        return subprocess.run([tool, "-c", f.name], capture_output=True, text=True, check=True).stdout, res


def loops(sass: str):
    """(label, [instruction lines]) for each backward branch: the body from the label to the branch."""
    lines = sass.splitlines()
    where = {}
    body = []
    for line in lines:
        m = re.match(r"\s*\.?(L_x_\d+):", line)
        if m:
            where[m.group(1)] = len(body)
            continue
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if m:
            body.append(m.group(1).strip())
    out = []
    for i, ins in enumerate(body):
        m = re.search(r"\bBRA\b.*?`?\(?\.?(L_x_\d+)", ins)
        if m and m.group(1) in where and where[m.group(1)] <= i:
            out.append((m.group(1), body[where[m.group(1)]:i + 1]))
    return out


def classify(ins: str) -> str:
    op = re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0]
    return op.split(".")[0]


def report(name: str, compiled: tuple, taps_per_iter: int, dump: bool) -> list:
    """Print each loop's counts (and its SASS with dump); a row per loop."""
    sass, res = compiled
    print(f"== {name} ({res})")
    rows = []
    for label, body in loops(sass):
        c = collections.Counter(classify(i) for i in body)
        per_tap = f"{len(body) / taps_per_iter:.2f} instructions per tap" if taps_per_iter else ""
        print(f"loop {label}: {len(body)} instructions, {per_tap} ({taps_per_iter} taps per thread and iteration)")
        print("   " + ", ".join(f"{k} {v}" for k, v in c.most_common()))
        if dump:
            print("\n".join("     " + i for i in body))
        if len(body) > 8:  # not the one-branch loops
            rows.append({"method": f"{name}, loop {label}", "note": f"{per_tap}; {len(body)} per iteration; {res}; "
                         + ", ".join(f"{k} {v}" for k, v in c.most_common(4))})
    return rows


def kernel(a) -> list:
    """Compile the kernel a.kernel asks for; its loops' rows."""
    from triton.experimental.gluon import language as gl

    from ..backends.triton import gluon, gluon_bwd, gluon_staged
    from ..backends.triton.kernels import load
    from ..ir.spec import resolve_op
    spec = resolve_op(a.op)
    reduce = a.reduce or spec.default_reduce
    g = dict(GEOM)
    if a.kernel == "fwd":
        compute = "tl.float16" if a.dtype == "fp16" and gluon.half_sum(spec, reduce) else "tl.float32"
        mod = load(gluon.source(spec, reduce, compute), False)
        cfg = tuple(int(v) for v in a.cfg.split(",")) if a.cfg else gluon.CONFIGS[a.config]
        bm, bn, bk, tm, tn = cfg[:5]
        g.update(HAS_BIAS=False, SAVE_AUX=a.save_aux, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
        if gluon_staged.is_staged(cfg):  # staged through shared memory, zero padding in the kernel
            g.update(gluon_staged.layouts(cfg), IH=56, IW=56, PH=1, PW=1)
            sass = _compile(mod._fwd_staged, g, gluon_staged.warps(cfg), a.dtype, maxnreg=a.maxnreg)
        else:
            g.update(L3=gluon.layout(cfg), K_MODE=cfg[-1])
            sass = _compile(mod._fwd_gluon, g, cfg[7] * cfg[8], a.dtype, maxnreg=a.maxnreg)
        return report(f"forward {a.op} {reduce} {a.dtype} config {cfg}" + (" saving winners" if a.save_aux else ""), sass, tm * bk * tn, a.dump)
    if a.kernel == "gx":
        mod = load(gluon_bwd.source_x(spec), False)
        cfg = gluon_bwd.X_CONFIG
        bm, bc, bk = cfg[:3]
        g.update(IH=56, IW=56, PH=1, PW=1, BLOCK_M=bm, BLOCK_C=bc, BLOCK_K=bk, L3=gluon.layout(cfg))
        sass = _compile(mod._bwd_x_gluon, g, cfg[7] * cfg[8])
        # one loop iteration: an out-channel block of BLOCK_K, the kernel's taps unrolled (static_range)
        return report(f"input gradient {a.op}", sass, cfg[3] * bk * cfg[4] * g["KH"] * g["KW"] * g["KD"], a.dump)
    if a.kernel in ("fwd2", "bwd2"):  # the two-level (max / min, sum) kernels, portable triton
        from ..backends.triton import twolevel_kernel
        inner = a.reduce or "max"
        mod = load(twolevel_kernel.source(spec, inner, tuple(True for _ in spec.weight_names)), False)
        bm, bn, nw = map(int, a.block.split(","))
        g.update(OUTER_MEAN=False, BLOCK_M=bm, BLOCK_N=bn)  # padded by torch: every tap inside
        if a.kernel == "fwd2":
            sass = _compile(mod._fwd2, g, nw, maxnreg=a.maxnreg)
        else:
            g.update(NEED_X=True, T_P=16)
            sass = _compile(mod._bwd2, g, nw, maxnreg=a.maxnreg)
        # one iteration: a channel's 9 taps unrolled (forward), a row tile's 9 taps twice (backward:
        # winners, then partials) of the BLOCK_M x BLOCK_N tile
        taps = bm * bn // (32 * nw) * g["KH"] * g["KW"] * (1 if a.kernel == "fwd2" else 2)
        return report(f"two-level ({inner}, sum) {a.kernel} {a.op} {bm}x{bn}, {nw} warps", sass, taps, a.dump)
    mod = load(gluon_bwd.source_w(spec, tuple(True for _ in spec.weight_names)), False)
    to, tc = map(int, a.tile.split(","))
    wo, wc = map(int, a.warps.split(","))
    layout = gl.BlockedLayout([to, 1, tc], [1, 32, 1], [wo, 1, wc], [2, 1, 0])
    g.update(BLOCK_O=to * wo, BLOCK_R=32, BLOCK_C=tc * wc, ROWS_U=a.u or gluon_bwd.GW_ROWS_U, L3=layout)
    sass = _compile(mod._bwd_w_gluon, g, wo * wc, maxnreg=a.maxnreg)
    return report(f"weight gradient {a.op} rows x{a.u or gluon_bwd.GW_ROWS_U}", sass, to * tc * g["ROWS_U"],
                  a.dump)


def main(argv=None) -> list:
    p = study.parser("sass", __doc__)
    p.add_argument("--op", default="adder")
    p.add_argument("--reduce", default=None)
    p.add_argument("--kernel", choices=["fwd", "gx", "gw", "fwd2", "bwd2"], default="gw",
                   help="fwd2 / bwd2: the two-level (max / min, sum) kernels (--reduce: the inner one)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--dump", action="store_true", help="print each loop's SASS")
    p.add_argument("--config", type=int, default=0, help="index into gluon.CONFIGS (fwd)")
    p.add_argument("--cfg", default=None, help="a forward config tuple written out, instead of --config")
    p.add_argument("--u", type=int, default=None, help="row blocks per iteration (gw; default the kernel's)")
    p.add_argument("--warps", default="4,2", help="warps along O,C (gw)")
    p.add_argument("--tile", default="4,8", help="partial sums per thread along O,C (gw)")
    p.add_argument("--block", default="64,32,4", help="BLOCK_M,BLOCK_N,warps (fwd2, bwd2)")
    p.add_argument("--maxnreg", type=int, default=None)
    p.add_argument("--save-aux", action="store_true", help="fwd: max / min saving their winners (training)")
    a = p.parse_args(argv)
    try:
        import triton.experimental.gluon  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"sass needs triton with Gluon: {err}")
    rows = [{"op": a.op, "shape": "N16C64O64H56k3", "mode": a.kernel, "dtype": a.dtype, **r} for r in kernel(a)]
    return study.finish("sass", rows, a, "cpu", device_label="sm_90 (compiled, not run)")
