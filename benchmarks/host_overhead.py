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

import lambdaconv as lc

BATCH = 50


def interleaved(fns: dict, rounds: int) -> dict:
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
            times[n].append((time.perf_counter() - t0) / BATCH * 1e6)
    return {n: statistics.median(v) for n, v in times.items()}


def ops_per_call(fn) -> int:
    """aten ops the profiler records for one call (top-level and nested), after a warm-up."""
    from torch.profiler import profile
    fn()
    with profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--ops", action="store_true", help="also count aten ops per call with torch.profiler")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    layers = {"nn.Conv2d": torch.nn.Conv2d(2, 2, 3, padding=1),
              "lc offset": lc.Conv2d(2, 2, 3, padding=1, op="offset"),
              "lc quadratic": lc.Conv2d(2, 2, 3, padding=1, op="quadratic")}
    gy = torch.randn(1, 2, 4, 4)
    fns = {}
    for mode, amp in (("fp32", False), ("bf16 autocast", True)):
        for name, layer in layers.items():
            leaves = [x] + list(layer.parameters())

            def step(layer=layer, leaves=leaves, amp=amp):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
                    y = layer(x)
                return torch.autograd.grad(y, leaves, gy.to(y.dtype))

            def fwd(layer=layer, amp=amp):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
                    return layer(x)

            fns[(mode, name, "fwd+bwd")] = step
            fns[(mode, name, "fwd")] = fwd
    us = interleaved(fns, args.rounds)
    print(f"# Host time per call, decompose layers vs nn.Conv2d (CPU, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, 1 thread)\n")
    print("Conv2d(2, 2, 3, padding=1) on (1, 2, 4, 4), input requiring grad; median of "
          f"{args.rounds} interleaved rounds of {BATCH} calls. Command: "
          "`PYTHONPATH=src python benchmarks/host_overhead.py" + (" --ops" if args.ops else "") + "`\n")
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


if __name__ == "__main__":
    main()
