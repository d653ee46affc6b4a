"""GPU benchmark of the decompose backend against nn.Conv2d (issue 3's GPU bars), correctness first.

    PYTHONPATH=src python3 benchmarks/decompose_gpu.py --out DIR

1. Correctness: offset, quadratic, l2, A*sin(x+B) on the GPU (float32 with TF32 off, and bfloat16
   autocast) against the float64 CPU reference, forward and every gradient, zeros / ignore / reflect.
2. Bars, N16 C64 O64 56x56 k3 pad1, fwd+bwd (torch.autograd.grad of input, weights, bias), float32
   and bfloat16 autocast, side by side in one run:
     nn.Conv2d | hand rewrite conv(x, A) - sum(A*B) | lc offset | lc quadratic
   timed three ways: eager with triton.testing.do_bench (median; the bar), the same calls replayed
   from a CUDA graph (GPU work alone, no Python), and the profiler's kernel count and kernel time
   per call. "backend only" rows call the decompose backend on a prepared call, which separates
   the backend's cost from the functional front end's argument checking.
   --interleaved ROUNDS: only the eager fwd+bwd, every variant once per round in a rotated order
   (ratios to nn.Conv2d taken within each round), and each one's GPU work from a CUDA graph.
3. Term threshold: compact ops (x*A + 1)**p, p terms after expansion, decompose vs each direct
   backend that runs on CUDA, forward.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

import lambdaconv as lc
from lambdaconv import backends
from lambdaconv.functional import prepare

DEV = "cuda"
T0 = time.time()


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def correctness() -> dict:
    out = {}
    g = torch.Generator().manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False
    for op in ("offset", "quadratic", "l2", "A*sin(x+B)"):
        names = lc.explain(op).weights
        for mode in ("zeros", "ignore", "reflect"):
            x = torch.randn(2, 4, 9, 9, generator=g, dtype=torch.float64)
            ws = {n: torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64) * 0.5 for n in names}
            b = torch.randn(6, generator=g, dtype=torch.float64)
            gy = torch.randn(2, 6, 9, 9, generator=g, dtype=torch.float64)
            kw = dict(padding=1, groups=2, padding_mode=mode)
            leaves = [x.clone().requires_grad_()] + [w.clone().requires_grad_() for w in ws.values()] + \
                [b.clone().requires_grad_()]
            yr = lc.conv2d(leaves[0], op, dict(zip(names, leaves[1:-1])), leaves[-1], backend="reference", **kw)
            ref = [yr] + list(torch.autograd.grad(yr, leaves, gy))
            for label, cast in (("float32", None), ("bf16 autocast", torch.bfloat16)):
                lv = [t.detach().float().to(DEV).requires_grad_() for t in leaves]
                with torch.autocast(DEV, dtype=torch.bfloat16, enabled=cast is not None):
                    y = lc.conv2d(lv[0], op, dict(zip(names, lv[1:-1])), lv[-1], **kw)
                got = [y] + list(torch.autograd.grad(y, lv, gy.to(DEV, y.dtype)))
                errs = [rel(a, r) for a, r in zip(got, ref)]
                tol = 1e-4 if cast is None else 3e-2
                out[f"{op} {mode} {label}"] = {"max_rel_err": max(errs), "ok": max(errs) <= tol,
                                               "out_dtype": str(y.dtype)}
    # the default: nn.Conv2d runs TF32 in float32; LC_TF32=0 times fp32 as fp32 (the anchors' setting)
    torch.backends.cudnn.allow_tf32 = os.environ.get("LC_TF32", "1") != "0"
    return out


def graph_time(fn, calls=10, replays=20) -> float:
    """Median ms per call of fn replayed from a CUDA graph (no CPU launch cost)."""
    from lambdaconv.bench.timing import cuda_graph
    graph, _ = cuda_graph(fn, calls)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times)


def kernel_profile(fn, iters=10) -> dict:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kern = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time for e in kern)
    names: dict = {}
    for e in kern:
        names[e.name[:80]] = names.get(e.name[:80], 0) + 1 / iters
    return {"kernels_per_call": len(kern) / iters, "kernel_ms_per_call": total_us / iters / 1e3, "kernel_names": names}


def host_time(fn, iters=100) -> float:
    """Wall ms per call with one sync at the end: max(CPU launch time, GPU time)."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1e3


def variants():
    """(x, name -> (fn of x, its parameters)): nn.Conv2d and the offset / quadratic layers."""
    torch.manual_seed(0)
    N, C, O, S = 16, 64, 64, 56
    x = torch.randn(N, C, S, S, device=DEV, requires_grad=True)
    conv = torch.nn.Conv2d(C, O, 3, padding=1).to(DEV)
    off = lc.Conv2d(C, O, 3, padding=1, op="offset").to(DEV)
    quad = lc.Conv2d(C, O, 3, padding=1, op="quadratic").to(DEV)
    A, B, bias = off.A, off.B, off.bias
    assert off.explain().strategy == quad.explain().strategy == "decompose"

    def hand(x):  # the hand rewrite of the offset layer
        return F.conv2d(x, A, bias, padding=1) - (A * B).sum((1, 2, 3)).view(1, -1, 1, 1)

    def plain(x):  # the offset as plain torch ops (C++ autograd): conv(x, A, bias - A.B) by one baddbmm
        o = A.shape[0]
        bb = torch.baddbmm(bias.view(o, 1, 1), A.reshape(o, 1, -1), B.reshape(o, -1, 1), alpha=-1).view(o)
        return F.conv2d(x, A, bb, padding=1)

    def folded(x):  # the same as plain torch ops with the constant as mul, sum and add (what lc offset runs)
        return F.conv2d(x, A, torch.add(bias, torch.mul(A, B).sum((1, 2, 3)), alpha=-1), padding=1)

    def backend_only(layer, op):
        names = layer.weight_names
        ws = {n: getattr(layer, n) for n in names}
        _, _, wsn, call, _ = prepare(2, x, op, ws, layer.bias, 1, 1, 1, 1, None, "zeros", "auto")
        be = backends.registry.get("decompose")
        return lambda x: be.run(x, layer.bias, {n: getattr(layer, n) for n in names}, call)

    return x, {
        "nn.Conv2d": (conv, [conv.weight, conv.bias]),
        "hand offset": (hand, [A, B, bias]),
        "lc offset": (off, [A, B, bias]),
        "plain offset": (plain, [A, B, bias]),
        "folded offset": (folded, [A, B, bias]),
        "lc quadratic": (quad, [quad.A, quad.B, quad.bias]),
        "offset backend only": (backend_only(off, "offset"), [A, B, bias]),
        "quadratic backend only": (backend_only(quad, "quadratic"), [quad.A, quad.B, quad.bias]),
    }


def steps(x, f, params, amp, gy):
    """(fwd+bwd step, no_grad forward) of one variant, as timed."""
    leaves = [x] + params

    def step():
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            y = f(x)
        return torch.autograd.grad(y, leaves, gy)

    def fwd():
        with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            return f(x)
    return step, fwd


def modes():
    """(mode, autocast on, x, variants, output gradient) for float32 and bfloat16 autocast."""
    x, vs = variants()
    gy32 = torch.randn(x.shape[0], 64, *x.shape[2:], device=DEV)
    for mode in ("float32", "bf16 autocast"):
        amp = mode != "float32"
        yield mode, amp, x, vs, (gy32.to(torch.bfloat16) if amp else gy32)


def eager_interleaved(rounds: int) -> dict:
    """Eager fwd+bwd (do_bench median, as the bar) of every variant, interleaved: each round times
    every variant once in a rotated order, and the ratio to nn.Conv2d is taken within the round.
    The GPU machine's host speed drifts between do_bench calls by more than the variants differ
    (session 5: nn.Conv2d 0.44 ms in one run, 0.64 in another), so back-to-back blocks per variant
    confound the two; the median over rounds of the per-round ratio does not."""
    from triton.testing import do_bench
    out = {}
    for mode, amp, x, vs, gy in modes():
        fns = {name: steps(x, v[0], v[1], amp, gy)[0] for name, v in vs.items()}
        times = {name: [] for name in fns}
        names = list(fns)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(do_bench(fns[name], warmup=5, rep=25, return_mode="median"))
        graph = {}
        for name in names:  # GPU work of the same step (no host time), for the eager figures' context
            try:
                graph[name] = graph_time(fns[name])
            except Exception as err:
                graph[name] = f"failed: {type(err).__name__}: {err}"
        base = times["nn.Conv2d"]
        out[mode] = {name: {"fwd_bwd_ms": statistics.median(t), "graph_ms": graph[name],
                            "ratio_median_of_rounds": statistics.median(a / b for a, b in zip(t, base)),
                            "ratio_min_max": [min(a / b for a, b in zip(t, base)), max(a / b for a, b in zip(t, base))]}
                     for name, t in times.items()}
        for name, r in out[mode].items():
            gr = r["graph_ms"] / out[mode]["nn.Conv2d"]["graph_ms"] if isinstance(r["graph_ms"], float) else float("nan")
            print(f"interleaved {mode:14s} {name:26s} {r['fwd_bwd_ms']:.4f} ms  ratio {r['ratio_median_of_rounds']:.3f}x "
                  f"[{r['ratio_min_max'][0]:.2f}, {r['ratio_min_max'][1]:.2f}]  graph {r['graph_ms']:.4f} ms {gr:.3f}x",
                  flush=True)
    return out


def bars() -> dict:
    from triton.testing import do_bench

    res = {}
    for mode, amp, x, variants_, gy in modes():
        res[mode] = {}
        for name, (f, params) in variants_.items():
            step, fwd = steps(x, f, params, amp, gy)
            r = {"fwd_bwd_ms": do_bench(step, warmup=50, rep=300, return_mode="median"),
                 "fwd_ms": do_bench(fwd, warmup=50, rep=200, return_mode="median")}
            for key, fn in (("fwd_bwd_graph_ms", lambda: graph_time(step)), ("profile", lambda: kernel_profile(step)),
                            ("fwd_bwd_host_ms", lambda: host_time(step))):
                try:
                    r[key] = fn()
                except Exception as err:  # diagnostics only: never lose the bar numbers
                    r[key] = f"failed: {type(err).__name__}: {err}"
            res[mode][name] = r
            print(f"{mode:14s} {name:24s} " + "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
        base = res[mode]["nn.Conv2d"]
        for name, r in res[mode].items():
            for k in ("fwd_bwd_ms", "fwd_ms", "fwd_bwd_graph_ms"):
                if isinstance(r.get(k), float) and isinstance(base.get(k), float):
                    r[k.replace("_ms", "_ratio")] = r[k] / base[k]
    return res


def threshold(budget_s: float) -> dict:
    from triton.testing import do_bench

    out = {}
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(8, 32, 32, 32, device=DEV, generator=g) * 0.5
    A = torch.randn(32, 32, 3, 3, device=DEV, generator=g) * 0.1
    for p in (3, 6, 12):
        op = f"(x*A + 1)**{p}"
        _, _, ws, call, _ = prepare(2, x, op, {"A": A}, None, 1, 1, 1, 1, None, "zeros", "auto")
        row = {}
        for name in backends.registry.names()[1:]:
            if name == "reference" or backends.registry.get(name).unsupported(call) or time.time() - T0 > budget_s:
                continue
            try:
                row[name] = do_bench(lambda: lc.conv2d(x, op, {"A": A}, padding=1, backend=name), warmup=5, rep=50,
                                     return_mode="median")
            except Exception as err:
                row[name] = f"failed: {type(err).__name__}: {err}"
        out[op] = row
        print(f"threshold {op}: " + "  ".join(f"{k} {v if isinstance(v, str) else f'{v:.3f} ms'}"
                                              for k, v in row.items()), flush=True)
    return out


def render(res: dict) -> str:
    """The markdown summary of a result JSON (also: --render FILE, no GPU needed)."""
    m = res["meta"]
    lines = [f"# decompose backend, GPU ({m['device']}, torch {m['torch']}, cuDNN {m['cudnn']})", "",
             "N16 C64 O64 56x56 k3 pad1, fwd+bwd = torch.autograd.grad of input, weights and bias. Ratios to "
             "nn.Conv2d measured side by side in one run. *eager*: triton.testing.do_bench median (includes "
             "Python and launch time); *graph*: the same calls replayed from a CUDA graph (GPU work alone); "
             "kernels: profiler count per call.", ""]
    for mode, rows in res.get("bars", {}).items():
        if "error" in rows:
            continue
        lines += [f"## {mode}", "", "| variant | eager fwd+bwd ms | ratio | graph fwd+bwd ms | ratio | kernels | "
                  "host ms/call | eager fwd ratio |", "|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            prof = r.get("profile") if isinstance(r.get("profile"), dict) else {}
            lines.append(f"| {name} | {r['fwd_bwd_ms']:.4f} | {r.get('fwd_bwd_ratio', 0):.3f}x | "
                         f"{r.get('fwd_bwd_graph_ms', float('nan')):.4f} | {r.get('fwd_bwd_graph_ratio', 0):.3f}x | "
                         f"{prof.get('kernels_per_call', '?')} | {r.get('fwd_bwd_host_ms', float('nan')):.3f} | "
                         f"{r.get('fwd_ratio', 0):.3f}x |")
        lines.append("")
    bad = [k for k, v in res.get("correctness", {}).items() if isinstance(v, dict) and not v.get("ok", True)]
    lines += ["Correctness (offset, quadratic, l2, A*sin(x+B); zeros, ignore, reflect; float32 and bf16 autocast "
              "vs the float64 CPU reference, forward and all gradients): " + ("all within tolerance" if not bad
                                                                              else f"FAILED: {bad}"), ""]
    if res.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in res["notes"]] + [""]
    if res.get("threshold") and "error" not in res["threshold"]:
        lines += ["Term threshold, forward eager, N8 C32 O32 32x32 (ms):", ""]
        for op, row in res["threshold"].items():
            lines.append(f"- `{op}`: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in row.items()))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds after which optional parts are skipped")
    ap.add_argument("--render", help="only write the markdown of this result JSON next to it")
    ap.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                    help="only the eager fwd+bwd of every variant, interleaved over ROUNDS rounds")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            text = render(json.load(f))
        with open(os.path.splitext(args.render)[0] + ".md", "w") as f:
            f.write(text)
        print(text)
        return
    os.makedirs(args.out, exist_ok=True)
    if args.interleaved:
        torch.backends.cudnn.allow_tf32 = os.environ.get("LC_TF32", "1") != "0"
        with open(os.path.join(args.out, "decompose_gpu_interleaved.json"), "w") as f:
            json.dump({"tf32": torch.backends.cudnn.allow_tf32, "rounds": args.interleaved,
                       "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "eager_fwd_bwd": eager_interleaved(args.interleaved)}, f, indent=1)
        return
    res = {"meta": {"torch": torch.__version__, "device": torch.cuda.get_device_name(),
                    "cudnn": torch.backends.cudnn.version(), "python": sys.version.split()[0]}}
    print(res["meta"], flush=True)
    tf32 = os.environ.get("LC_TF32", "1") != "0"
    res["meta"]["cudnn_allow_tf32_in_bars"] = tf32
    path = os.path.join(args.out, "decompose_gpu.json" if tf32 else "decompose_gpu_notf32.json")

    def save():
        with open(path, "w") as f:
            json.dump(res, f, indent=2)

    for part, fn in (("correctness", correctness), ("bars", bars), ("threshold", lambda: threshold(args.budget))):
        t = time.time()
        try:
            res[part] = fn()
        except Exception:
            res[part] = {"error": traceback.format_exc()}
            print(res[part]["error"], flush=True)
        print(f"[{part}: {time.time() - t:.1f} s]", flush=True)
        save()
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(render(res))
    bad = [k for k, v in res.get("correctness", {}).items() if isinstance(v, dict) and not v.get("ok", True)]
    print("correctness:", "all ok" if not bad else f"FAILED {bad}")
    for mode, rows in res.get("bars", {}).items():
        if not isinstance(rows, dict) or "error" in rows:
            continue
        for name, r in rows.items():
            nan = float("nan")
            print(f"{mode:14s} {name:24s} fwd+bwd {r.get('fwd_bwd_ratio', nan):.3f}x  "
                  f"graph {r.get('fwd_bwd_graph_ratio', nan):.3f}x  fwd {r.get('fwd_ratio', nan):.3f}x")


if __name__ == "__main__":
    main()
