"""Issue 2 bars, CPU: the direct (tiled) path against unfold+broadcast, side by side in one run.

1. Speed: fwd+bwd of adder and dilation (max-plus) at N8 C32 O32 32x32 k3 pad1, lambdaconv vs
   unfold+broadcast eager vs torch.compile of it; rounds interleaved, medians reported.
2. Memory: adder at x (8,64,64,64), W (64,64,3,3), pad 1: peak RSS growth of fwd+bwd, each
   method in its own fresh subprocess (VmHWM reset through /proc/self/clear_refs).

    python benchmarks/direct_cpu.py --out benchmarks/results
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import lambdaconv as lc
from lambdaconv.bench.cases import parse_ops, parse_shape
from lambdaconv.bench.methods import make_inputs, unfold_conv

SPEED_SHAPE = parse_shape("N8C32O32H32k3")  # padding 1
MEMORY_SHAPE = parse_shape("N8C64O64H64k3")


def methods(case, shape):
    """lambdaconv, and the peers exactly as `python -m lambdaconv.bench` builds them."""
    eager = unfold_conv(case, shape)  # unfold + broadcast + reduce: the whole taps tensor
    return {
        "lambdaconv": lambda x, ws: lc.conv2d(x, case.op, ws, padding=shape.p, reduce=case.reduce),
        "unfold": eager,
        "compile": torch.compile(eager),
    }


def fwd_bwd(f, x, ws):
    y = f(x, ws)
    y.backward(torch.ones_like(y))


def speed(rounds):
    rows = []
    torch.manual_seed(0)
    for case in parse_ops("adder,dilation"):
        op = case.op
        x, ws = make_inputs(case, SPEED_SHAPE, "cpu", torch.float32)
        x.requires_grad_()
        ws = {n: w.requires_grad_() for n, w in ws.items()}
        ms = methods(case, SPEED_SHAPE)
        for f in ms.values():  # warm-up (compiles)
            fwd_bwd(f, x, ws)
        times = {k: [] for k in ms}
        for _ in range(rounds):
            for k, f in ms.items():
                t = time.perf_counter()
                fwd_bwd(f, x, ws)
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for k in ms:
            rows.append({"op": op, "method": k, "fwd_bwd_ms": round(med[k], 1),
                         "speedup_vs_unfold": round(med["unfold"] / med[k], 2),
                         "speedup_vs_compile": round(med["compile"] / med[k], 2)})
    return rows


def _rss_child(method):
    """Run in a subprocess: peak RSS growth (GiB) of one fwd+bwd (or fwd only) of the big adder."""
    (case,) = parse_ops("adder")
    x, ws = make_inputs(case, MEMORY_SHAPE, "cpu", torch.float32)
    f = {"lambdaconv": lambda: fwd_bwd(methods(case, MEMORY_SHAPE)["lambdaconv"], x.requires_grad_(),
                                       {n: w.requires_grad_() for n, w in ws.items()}),
         "unfold_fwd_only": lambda: unfold_conv(case, MEMORY_SHAPE)(x, ws)}[method]

    def status(key):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key)) / 2 ** 20
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak (VmHWM) to the current RSS
    f()
    print(json.dumps({"method": method, "peak_growth_gib": round(status("VmHWM:") - base, 3)}))


def memory():
    out = []
    for m in ("lambdaconv", "unfold_fwd_only"):
        r = subprocess.run([sys.executable, __file__, "--rss-child", m], capture_output=True, text=True)
        if r.returncode:
            out.append({"method": m, "error": r.stderr.strip().splitlines()[-1]})
        else:
            out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rss-child", default=None)
    a = ap.parse_args()
    if a.rss_child:
        return _rss_child(a.rss_child)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "speed_N8_C32_O32_32x32_k3": speed(a.rounds), "memory_adder_N8_C64_O64_64x64_k3": memory()}
    md = ["| op | method | fwd+bwd ms | x vs unfold | x vs compile |", "|---|---|---:|---:|---:|"]
    md += [f"| {r['op']} | {r['method']} | {r['fwd_bwd_ms']} | {r['speedup_vs_unfold']} | {r['speedup_vs_compile']} |"
           for r in res["speed_N8_C32_O32_32x32_k3"]]
    md += ["", "| adder N8 C64 O64 64x64 k3 | peak RSS growth GiB |", "|---|---:|"]
    md += [f"| {r['method']} | {r.get('peak_growth_gib', r.get('error'))} |" for r in res["memory_adder_N8_C64_O64_64x64_k3"]]
    print("\n".join(md))
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "direct_cpu.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        with open(os.path.join(a.out, "direct_cpu.md"), "w") as fh:
            fh.write("CPU (2 cores), `python benchmarks/direct_cpu.py --out benchmarks/results`\n\n" + "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
