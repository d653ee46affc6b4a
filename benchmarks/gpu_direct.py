"""Direct ops on one GPU, side by side: lambdaconv's triton kernels against the peers.

    PYTHONPATH=src python benchmarks/gpu_direct.py --out OUTDIR [--quick] [--no-peers]

Shapes: N16 C64 O64 56x56 and N16 C256 O256 14x14, k3 pad1 (1.85e9 taps each). Ops: adder
-|x-W| (sum), max-plus x+W (max), sigmoid(A*x)*B (sum). Peers: torch.compile of unfold+broadcast,
unfold+broadcast eager, torch.cdist(p=1) on unfolded x (adder), nn.Conv2d (cuDNN, TF32 off) for
memory and speed scale. Times are triton.testing.do_bench medians in ms; "fwd" runs under no_grad
(inference), "fwd+bwd" computes the gradients of x and every weight. The CUDA-core roofline: 2
instructions per tap at 33 T instructions/s (measured FMA rate 65.7 TFLOPS) = 16.4 T taps/s.
Writes results.json and results.md to OUTDIR.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import lambdaconv as lc  # noqa: E402

ROOF_TAPS_PER_S = 16.4e12
PARTIAL = None
SHAPES = {"N16 C64 O64 56x56": (16, 64, 64, 56), "N16 C256 O256 14x14": (16, 256, 256, 14)}
OPS = {  # name -> (lambdaconv op, reduce, weight names, torch per-tap fn, torch reduce)
    "adder": ("-abs(x-W)", "sum", ("W",), lambda x, w: -(x - w["W"]).abs(), "sum"),
    "max-plus": ("x+W", "max", ("W",), lambda x, w: x + w["W"], "max"),
    "sigmoid(A*x)*B": ("sigmoid(A*x)*B", "sum", ("A", "B"), lambda x, w: torch.sigmoid(w["A"] * x) * w["B"], "sum"),
}


def bench(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_ms(fn, calls=1):
    """do_bench of fn replayed from a CUDA graph (of `calls` calls, per call): its GPU work alone,
    without the host's time per call (the GPU machine's host is several times slower than a
    workstation's: session 4 notes)."""
    from lambdaconv.bench.timing import cuda_graph
    g, _ = cuda_graph(fn, calls)
    try:
        return bench(g.replay) / calls
    finally:
        del g


def peak_gib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 30


def unfold_op(x, ws, k, fn, red):
    """The peers' way: im2col, broadcast against the weights, reduce over (C*K)."""
    n, c, h, wd = x.shape
    cols = F.unfold(x, k, padding=k // 2)  # (N, C*K, L)
    wv = {n_: w.reshape(w.shape[0], -1, 1) for n_, w in ws.items()}  # (O, CK, 1)
    t = fn(cols[:, None], {n_: w[None] for n_, w in wv.items()})  # (N, O, CK, L)
    y = t.sum(2) if red == "sum" else t.amax(2)
    return y.reshape(n, -1, h, wd)


def cdist_adder(x, ws, k):
    n, c, h, wd = x.shape
    cols = F.unfold(x, k, padding=k // 2).transpose(1, 2)  # (N, L, CK)
    w = ws["W"].reshape(ws["W"].shape[0], -1)
    y = -torch.cdist(cols, w[None].expand(n, -1, -1), p=1)  # (N, L, O)
    return y.transpose(1, 2).reshape(n, -1, h, wd)


def inputs(shape, wnames, dtype, seed=0):
    n, c, o, s = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, c, s, s, device="cuda", dtype=dtype, generator=g)
    ws = {k: (torch.randn(o, c, 3, 3, device="cuda", dtype=dtype, generator=g) * 0.5) for k in wnames}
    return x, ws


def measure(name, fwd, x, ws, gy, rows, key, fwd_only=False):
    """fwd (no_grad) and fwd+bwd ms and fwd+bwd peak memory of one implementation."""
    leaves = [x] + list(ws.values())

    def f():
        with torch.no_grad():
            fwd(x, ws)

    def fb():
        for t in leaves:
            t.requires_grad_(True)
        y = fwd(x, ws)
        torch.autograd.grad(y, leaves, gy)

    r = {"impl": name, **key}
    try:
        r["fwd_ms"] = bench(f)
        try:
            r["fwd_graph_ms"] = graph_ms(f, 10)
        except Exception as err:  # not capturable: the eager figure stands alone
            r["fwd_graph_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        if not fwd_only:
            r["fwd_bwd_ms"] = bench(fb)
            r["peak_gib"] = peak_gib(fb)
    except torch.OutOfMemoryError as err:
        r["error"] = f"out of memory: {str(err).splitlines()[0]}"
    except Exception as err:  # a peer failing (e.g. an illegal memory access) is a result too
        import traceback
        traceback.print_exc()
        r["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    finally:
        for t in leaves:
            t.requires_grad_(False)
        torch.cuda.empty_cache()
    rows.append(r)
    print(json.dumps(r), flush=True)
    if PARTIAL:  # a run cut short by a time limit still leaves its rows
        with open(PARTIAL, "w") as f:
            json.dump(rows, f, indent=1)
    return r


def lc_impl(op, red, backend):
    return lambda x, ws: lc.conv2d(x, op, ws, padding=1, reduce=red, backend=backend)


def warm_gpu(seconds: float = 2.0) -> None:
    """Busy the GPU for a while first: the first rows were measured at idle clocks otherwise
    (session 4: the first adder forward 0.330 ms, the same kernel 0.218 one row later)."""
    a = torch.randn(4096, 4096, device="cuda")
    t = time.time()
    while time.time() - t < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def run(args):
    warm_gpu()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows, checks = [], []
    dev = torch.cuda.get_device_name()
    for sname, shape in SHAPES.items():
        n, c, o, s = shape
        taps = n * o * s * s * c * 9
        for oname, (op, red, wn, fn, tred) in OPS.items():
            if args.quick and sname != next(iter(SHAPES)):
                continue
            key = {"shape": sname, "op": oname, "dtype": "fp32", "taps": taps}
            x, ws = inputs(shape, wn, torch.float32)
            gy = torch.randn(n, o, s, s, device="cuda")
            ours = lc_impl(op, red, "triton")
            with torch.no_grad():  # correctness against the eager definition (float64)
                y = ours(x, ws)
                yr = unfold_op(x.double(), {k: v.double() for k, v in ws.items()}, 3, fn, tred)
                checks.append({**key, "rel_err_vs_fp64": ((y.double() - yr).norm() / yr.norm()).item()})
                del yr
            torch.cuda.empty_cache()
            r = measure("lambdaconv triton", ours, x, ws, gy, rows, key)
            if "fwd_ms" in r:
                r["fwd_roofline_frac"] = taps / (r["fwd_ms"] * 1e-3) / ROOF_TAPS_PER_S
            if "fwd_graph_ms" in r:
                r["fwd_graph_roofline_frac"] = taps / (r["fwd_graph_ms"] * 1e-3) / ROOF_TAPS_PER_S
            os.environ["LAMBDACONV_GLUON_BWD"] = "1"  # the opt-in Gluon backward kernels, side by side
            measure("lambdaconv triton, Gluon bwd", ours, x, ws, gy, rows, key)
            os.environ.pop("LAMBDACONV_GLUON_BWD")
            xh, wsh = x.half(), {k: v.half() for k, v in ws.items()}
            measure("lambdaconv triton", ours, xh, wsh, gy.half(), rows, {**key, "dtype": "fp16"})
            if args.peers:
                comp = torch.compile(lambda x_, w_: unfold_op(x_, w_, 3, fn, tred))
                measure("torch.compile(unfold+broadcast)", comp, x, ws, gy, rows, key)
                if oname == "adder":
                    measure("torch.cdist(p=1) on unfold", lambda x_, w_: cdist_adder(x_, w_, 3), x, ws, gy, rows, key)
                if args.eager:
                    measure("unfold+broadcast eager", lambda x_, w_: unfold_op(x_, w_, 3, fn, tred), x, ws, gy, rows,
                            key)
            del x, ws
            torch.cuda.empty_cache()
        x, ws = inputs(shape, ("weight",), torch.float32)
        gy = torch.randn(n, o, s, s, device="cuda")
        measure("nn.Conv2d (cuDNN, TF32 off)", lambda x_, w_: F.conv2d(x_, w_["weight"], padding=1), x, ws, gy, rows,
                {"shape": sname, "op": "linear", "dtype": "fp32", "taps": n * o * s * s * c * 9})
    from lambdaconv.backends.triton import gluon
    return {"device": dev, "torch": torch.__version__, "triton": __import__("triton").__version__,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows, "checks": checks,
            "gluon_forward_tuning": gluon.TUNE_LOG}


def sweep():
    """Forward of each Gluon config against the portable kernel; per-kernel times of fwd+bwd."""
    from lambdaconv.backends.triton import gluon, gluon_staged
    torch.backends.cudnn.allow_tf32 = False
    base = list(gluon.CONFIGS)
    SWEEP = base  # noqa: N806
    s1, s2 = SHAPES
    staged = [c for c in SWEEP if gluon_staged.is_staged(c)]  # shared-memory staged (session 6)
    # more staged configs to try, "a,b,...;c,d,..." (LC_SWEEP_EXTRA): timed next to CONFIGS' ones
    extra = [tuple(int(v) for v in c.split(",")) for c in os.environ.get("LC_SWEEP_EXTRA", "").split(";") if c]
    staged += extra
    SWEEP = SWEEP + extra  # noqa: N806
    plan = [(s1, "adder", torch.float32, SWEEP), (s1, "max-plus", torch.float32, SWEEP),
            (s1, "max-plus", torch.float16, SWEEP[:4] + staged), (s1, "adder", torch.float16, SWEEP[:2] + staged),
            (s2, "adder", torch.float16, SWEEP[:2] + staged),
            (s1, "sigmoid(A*x)*B", torch.float32, [SWEEP[0], SWEEP[2], SWEEP[3]]),
            (s2, "adder", torch.float32, SWEEP), (s2, "max-plus", torch.float32, SWEEP[:4] + staged)]
    if os.environ.get("LC_SWEEP_STAGED_ONLY"):  # the first config for reference, then the staged ones
        plan = [(a, b, c, [d[0]] + [e for e in d if gluon_staged.is_staged(e)]) for a, b, c, d in plan if "sigmoid" not in b]
    only = os.environ.get("LC_SWEEP_ONLY")  # "shape/op/dtype" substrings, e.g. "56x56/adder/float16"
    if only:
        plan = [e for e in plan if all(part in f"{e[0]}/{e[1]}/{e[2]}" for part in only.split("/"))]
    # register caps to time each config with ("0": none); unset: each config's own (gluon.FWD_MAXNREG)
    caps = [int(v) for v in os.environ["LC_SWEEP_MAXNREG"].split(",")] if os.environ.get("LC_SWEEP_MAXNREG") else [None]
    for sname, oname, dt, cfgs in plan:
        shape = SHAPES[sname]
        n, c, o, s = shape
        taps = n * o * s * s * c * 9
        op, red, wn, fn, tred = OPS[oname]
        x, ws = inputs(shape, wn, dt)
        f = lc_impl(op, red, "triton")
        os.environ["LAMBDACONV_GLUON"] = "0"
        with torch.no_grad():
            ref = f(x, ws).float()
            ms = graph_ms(lambda: f(x, ws), 10)  # GPU work: the host time per call hides the kernels
        print(f"{sname} {oname} {dt} portable {ms:.3f} ms {taps / ms / 1e-3 / ROOF_TAPS_PER_S:.0%}", flush=True)
        os.environ["LAMBDACONV_GLUON"] = "strict"
        for cfg, cap in ((c, cap) for c in cfgs for cap in caps):
            gluon.CONFIGS[:] = [cfg]
            gluon.clear_decisions()  # they are cached per CONFIGS object, which is the same list
            if cap is not None:
                os.environ["LAMBDACONV_GLUON_FWD_MAXNREG"] = str(cap)
            try:
                with torch.no_grad():
                    y = f(x, ws).float()
                    err = ((y - ref).norm() / ref.norm()).item()
                    ms = graph_ms(lambda: f(x, ws), 10)
                cap_used = gluon.FWD_MAXNREG.get(cfg) if cap is None else cap
                print(f"{sname} {oname} {dt} {cfg} maxnreg {cap_used or '-'} {ms:.3f} ms "
                      f"{taps / ms / 1e-3 / ROOF_TAPS_PER_S:.0%} err {err:.1e}", flush=True)
            except Exception as err:
                print(f"{sname} {oname} {dt} {cfg} failed {type(err).__name__}: {str(err)[:300]}", flush=True)
    os.environ.pop("LAMBDACONV_GLUON_FWD_MAXNREG", None)
    gluon.CONFIGS[:] = base
    os.environ["LAMBDACONV_GLUON"] = "1"
    if os.environ.get("LC_SWEEP_KERNELS", "1") != "0":
        kernel_times()


def kernel_times():
    """Per-kernel GPU time of fwd+bwd (profiler), portable backward then the Gluon one."""
    from torch.profiler import ProfilerActivity, profile
    shape = SHAPES["N16 C64 O64 56x56"]
    for oname, gbwd in (("adder", "0"), ("adder", "1"), ("sigmoid(A*x)*B", "0"), ("max-plus", "0")):
        os.environ["LAMBDACONV_GLUON_BWD"] = gbwd
        op, red, wn, fn, tred = OPS[oname]
        x, ws = inputs(shape, wn, torch.float32)
        gy = torch.randn(shape[0], shape[2], shape[3], shape[3], device="cuda")
        leaves = [x.requires_grad_()] + [w.requires_grad_() for w in ws.values()]
        f = lc_impl(op, red, "triton")
        for _ in range(3):
            torch.autograd.grad(f(x, ws), leaves, gy)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                torch.autograd.grad(f(x, ws), leaves, gy)
            torch.cuda.synchronize()
        print(f"== {oname} fwd+bwd, 5 iterations, LAMBDACONV_GLUON_BWD={gbwd}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


def host():
    """Host time per no_grad forward (adder, first shape) against its GPU time: where lc.conv2d's
    end-to-end time exceeds the kernel's (run 18: 0.63-0.82 ms against a 0.21 ms kernel), this says
    whether the host is the limit and where its time goes."""
    import cProfile
    import io
    import pstats
    dt = getattr(torch, os.environ.get("LC_HOST_DTYPE", "float32"))  # float16: the packed-half forward
    x, ws = inputs(SHAPES["N16 C64 O64 56x56"], ("W",), dt)
    f = lc_impl("-abs(x-W)", "sum", "triton")
    with torch.no_grad():
        f(x, ws)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(50):
            f(x, ws)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(f"{dt}: host {(t1 - t0) / 50 * 1e6:.0f} us per call; GPU drained {(t2 - t1) * 1e3:.2f} ms after; "
              f"do_bench {bench(lambda: f(x, ws)):.3f} ms", flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            f(x, ws)
        prof.disable()
        torch.cuda.synchronize()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue())
    # the same calls under torch.profiler: CPU time of each aten op and CUDA runtime call (what
    # cProfile does not see: time inside C++, waits in cudaLaunchKernel)
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as tp:
        for _ in range(20):
            f(x, ws)
        torch.cuda.synchronize()
    print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50))


def markdown(res) -> str:
    lines = [f"# Direct ops on {res['device']} (torch {res['torch']}, triton {res['triton']}), {res['when']}", "",
             "do_bench medians; fwd under no_grad; fwd+bwd = gradients of x and every weight; fwd graph = the same "
             "forward replayed from a CUDA graph (its GPU work: for ours the padding, the weights' layout and the "
             "kernel), roofline fractions of both.", ""]
    for run, what in res.get("runs", {}).items():
        lines += [f"- run {run}: {what}"]
    lines += ["" if res.get("runs") else None,
             "| shape | op | impl | dtype | fwd ms | fwd graph ms | fwd+bwd ms | peak GiB | fwd roofline (graph) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    lines = [v for v in lines if v is not None]
    for r in res["rows"]:
        f = lambda k, fmt, s=1: (fmt % (s * r[k])) if k in r else ("err" if "error" in r else "")  # noqa: E731
        roof = f('fwd_roofline_frac', '%.0f%%', 100)
        if "fwd_graph_roofline_frac" in r:
            roof += f" ({f('fwd_graph_roofline_frac', '%.0f%%', 100)})"
        lines.append(f"| {r['shape']} | {r['op']} | {r['impl']} | {r['dtype']} | {f('fwd_ms', '%.3f')} | "
                     f"{f('fwd_graph_ms', '%.3f')} | {f('fwd_bwd_ms', '%.3f')} | {f('peak_gib', '%.2f')} | {roof} |")
    errs = [r for r in res["rows"] if "error" in r]
    if errs:
        lines += ["", "Errors:"] + [f"- {r['impl']} {r['shape']} {r['op']} {r['dtype']}: {r['error']}" for r in errs]
    lines += ["", "Correctness (lambdaconv triton fp32 vs float64 unfold definition):", ""]
    lines += [f"- {c['shape']} {c['op']}: rel err {c['rel_err_vs_fp64']:.2e}" for c in res["checks"]]
    if res.get("gluon_forward_tuning"):
        lines += ["", "Forward tuning (ms per candidate: Gluon configs, then the portable kernel):", ""]
        lines += [f"- CG {t['CG']} OG {t['OG']} rows {t['rows']} ({t['module'][-22:]}): "
                  + ", ".join(f"{ms} {c if c == 'portable' else tuple(c)}" for ms, c in t["ms"])
                  for t in res["gluon_forward_tuning"]]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="first shape only")
    p.add_argument("--no-peers", dest="peers", action="store_false")
    p.add_argument("--eager", action="store_true", help="also unfold+broadcast eager (slow, 14-28 GiB)")
    p.add_argument("--sweep", action="store_true", help="time the Gluon forward configs and the fwd+bwd kernels")
    p.add_argument("--kernels", action="store_true", help="per-kernel GPU times of fwd+bwd (profiler)")
    p.add_argument("--host", action="store_true", help="host us per forward call and a cProfile of 20 calls")
    args = p.parse_args()
    if args.sweep:
        sweep()
        return
    if args.host:
        host()
        return
    if args.kernels:
        kernel_times()
        return
    os.makedirs(args.out, exist_ok=True)
    global PARTIAL
    PARTIAL = os.path.join(args.out, "partial_rows.json")
    res = run(args)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
