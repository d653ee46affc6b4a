"""Host time per call of the decompose layers against nn.Conv2d, on a tiny input (the CPU proxy
for the per-call Python + dispatch cost that dominates eager GPU timings at small sizes).

    PYTHONPATH=src python benchmarks/host_overhead.py            # prints the markdown table
    PYTHONPATH=src python benchmarks/host_overhead.py --ops      # plus torch ops per call

Layers Conv2d(2, 2, 3, padding=1), input (1, 2, 4, 4) requiring grad, torch.set_num_threads(1):
the convolution itself is a few microseconds, the rest is host overhead. A step is what
benchmarks/decompose_gpu.py times: the forward under torch.autocast(enabled=False) (bf16 row:
enabled) and torch.autograd.grad of the input, weights and bias; "fwd" is the forward under
no_grad. Variants are timed interleaved (one batch of calls each per round, rotating order) and
the median over rounds is reported, so load from other processes hits every variant alike.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import lambdaconv as lc

BATCH = 50


def interleaved(fns: dict, rounds: int, sync=lambda: None) -> dict:
    """Median microseconds per call of each fn, timed in batches of BATCH calls, round-robin."""
    names = list(fns)
    for n in names:
        for _ in range(200):
            fns[n]()
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            f = fns[n]
            t0 = time.perf_counter()
            for _ in range(BATCH):
                f()
            sync()
            times[n].append((time.perf_counter() - t0) / BATCH * 1e6)
    return {n: statistics.median(v) for n, v in times.items()}


def ops_per_call(fn) -> int:
    """aten ops the profiler records for one call (top-level and nested), after a warm-up."""
    from torch.profiler import profile
    fn()
    with profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def plain_offset(layer):
    """The offset layer as plain torch ops (C++ autograd, no Python Function): conv(x, A) with the
    bias bias - sum(A*B) computed by one baddbmm. A candidate for the decompose backend: fewer host
    microseconds than the Function, a few more small GPU kernels."""
    def f(x):
        A, B, b = layer.A, layer.B, layer.bias
        o = A.shape[0]
        bb = torch.baddbmm(b.view(o, 1, 1), A.reshape(o, 1, -1), B.reshape(o, -1, 1), alpha=-1).view(o)
        return F.conv2d(x, A, bb, padding=1)
    return f


def hand_offset(layer):
    """The issue's hand rewrite of the offset layer: conv(x, A) - sum(A*B), plain torch ops."""
    def f(x):
        A, B = layer.A, layer.B
        return F.conv2d(x, A, layer.bias, padding=1) - (A * B).sum((1, 2, 3)).view(1, -1, 1, 1)
    return f


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--ops", action="store_true", help="also count aten ops per call with torch.profiler")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: host time of launching (the GPU work is tiny)")
    ap.add_argument("--direct", action="store_true", help="also the direct ops adder and max-plus (triton on cuda)")
    ap.add_argument("--profile", default="", help="cProfile one layer's fwd+bwd (name as in the table), top 30")
    args = ap.parse_args()
    dev = args.device
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4, device=dev, requires_grad=True)
    layers = {"nn.Conv2d": torch.nn.Conv2d(2, 2, 3, padding=1).to(dev),
              "lc offset": lc.Conv2d(2, 2, 3, padding=1, op="offset").to(dev),
              "lc quadratic": lc.Conv2d(2, 2, 3, padding=1, op="quadratic").to(dev)}
    layers["plain offset"] = plain_offset(layers["lc offset"])
    layers["hand offset"] = hand_offset(layers["lc offset"])
    params = {"plain offset": list(layers["lc offset"].parameters()),
              "hand offset": list(layers["lc offset"].parameters())}
    if args.direct:
        layers["lc adder"] = lc.Conv2d(2, 2, 3, padding=1, op="adder").to(dev)
        layers["lc max-plus"] = lc.Conv2d(2, 2, 3, padding=1, op="dilation").to(dev)
    gy = torch.randn(1, 2, 4, 4, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    fns = {}
    for mode, amp in (("fp32", False), ("bf16 autocast", True)):
        for name, layer in layers.items():
            leaves = [x] + params.get(name, list(getattr(layer, "parameters", list)()))

            def step(layer=layer, leaves=leaves, amp=amp):
                with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
                    y = layer(x)
                return torch.autograd.grad(y, leaves, gy.to(y.dtype))

            def fwd(layer=layer, amp=amp):
                with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
                    return layer(x)

            fns[(mode, name, "fwd+bwd")] = step
            fns[(mode, name, "fwd")] = fwd
    us = interleaved(fns, args.rounds, sync)
    where = (torch.cuda.get_device_name() if dev == "cuda" else (platform.processor() or platform.machine()))
    print(f"# Host time per call, decompose layers vs nn.Conv2d ({dev}: {where}, torch {torch.__version__}, "
          "1 thread)\n")
    print("Conv2d(2, 2, 3, padding=1) on (1, 2, 4, 4), input requiring grad; median of "
          f"{args.rounds} interleaved rounds of {BATCH} calls. Command: "
          f"`PYTHONPATH=src python benchmarks/host_overhead.py --device {dev}" + (" --ops" if args.ops else "")
          + (" --direct" if args.direct else "") + "`\n")
    cols = "| mode | layer | fwd+bwd us | ratio | fwd us | ratio |" + (" aten ops fwd+bwd | fwd |" if args.ops else "")
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for mode in ("fp32", "bf16 autocast"):
        base = {k: us[(mode, "nn.Conv2d", k)] for k in ("fwd+bwd", "fwd")}
        for name in layers:
            fb, f = us[(mode, name, "fwd+bwd")], us[(mode, name, "fwd")]
            row = f"| {mode} | {name} | {fb:.1f} | {fb / base['fwd+bwd']:.2f}x | {f:.1f} | {f / base['fwd']:.2f}x |"
            if args.ops:
                row += f" {ops_per_call(fns[(mode, name, 'fwd+bwd')])} | {ops_per_call(fns[(mode, name, 'fwd')])} |"
            print(row)
    if args.profile:
        import cProfile
        import pstats
        fn = fns[("fp32", args.profile, "fwd+bwd")]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            fn()
        sync()
        prof.disable()
        print(f"\n## cProfile: {args.profile} fwd+bwd, 200 calls\n\n```")
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        print("```")


if __name__ == "__main__":
    main()
