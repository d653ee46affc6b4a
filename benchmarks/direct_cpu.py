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
import torch.nn.functional as F

import lambdaconv as lc

UNFOLD = {  # the way people write it today: (N, 1, CK, P) against (O, CK, 1), then reduce
    "adder": lambda cols, w: -(cols[:, None] - w).abs().sum(2),
    "dilation": lambda cols, w: (cols[:, None] + w).amax(2),
}


def unfold_conv(op, x, w):
    n, c, h, wd = x.shape
    o = w.shape[0]
    cols = F.unfold(x, w.shape[-1], padding=1)  # (N, CK, P)
    return UNFOLD[op](cols, w.reshape(o, -1, 1)).reshape(n, o, h, wd)


def methods(op):
    compiled = torch.compile(lambda x, w: unfold_conv(op, x, w))
    return {
        "lambdaconv": lambda x, w: lc.conv2d(x, op, {"weight": w}, padding=1),
        "unfold": lambda x, w: unfold_conv(op, x, w),
        "compile": compiled,
    }


def fwd_bwd(f, x, w):
    y = f(x, w)
    y.backward(torch.ones_like(y))


def speed(rounds):
    rows = []
    torch.manual_seed(0)
    for op in ("adder", "dilation"):
        x = torch.randn(8, 32, 32, 32, requires_grad=True)
        w = torch.randn(32, 32, 3, 3, requires_grad=True)
        ms = methods(op)
        for f in ms.values():  # warm-up (compiles)
            fwd_bwd(f, x, w)
        times = {k: [] for k in ms}
        for _ in range(rounds):
            for k, f in ms.items():
                t = time.perf_counter()
                fwd_bwd(f, x, w)
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for k in ms:
            rows.append({"op": op, "method": k, "fwd_bwd_ms": round(med[k], 1),
                         "speedup_vs_unfold": round(med["unfold"] / med[k], 2),
                         "speedup_vs_compile": round(med["compile"] / med[k], 2)})
    return rows


def _rss_child(method):
    """Run in a subprocess: peak RSS growth (GiB) of one fwd+bwd (or fwd only) of the big adder."""
    torch.manual_seed(0)
    x = torch.randn(8, 64, 64, 64, requires_grad=True)
    w = torch.randn(64, 64, 3, 3, requires_grad=True)
    f = {"lambdaconv": lambda: fwd_bwd(lambda a, b: lc.conv2d(a, "adder", {"weight": b}, padding=1), x, w),
         "unfold_fwd_only": lambda: unfold_conv("adder", x.detach(), w.detach())}[method]

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
