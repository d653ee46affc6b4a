"""The direct kernels of one op under Nsight Compute: where their cycles go (stall reasons,
pipe utilization, occupancy), for the counts in gpu_direct_notes.md to be checked against.

    ncu --clock-control none --profile-from-start off --section WarpStateStats ... \\
        python3 benchmarks/ncu_probe.py --op adder [--dtype fp16] [--fwd-only]
    python3 benchmarks/ncu_probe.py --op adder --table   # no ncu: torch.profiler kernel table

Shape: the issue's first (N16 C64 O64 56x56 k3 pad1). The calls are warmed up (compiled, tuned)
before cudaProfilerStart, so ncu sees only the profiled calls' kernels.
"""
from __future__ import annotations

import argparse

import torch

import lambdaconv as lc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--op", default="adder")
    ap.add_argument("--reduce", default=None)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--fwd-only", action="store_true")
    ap.add_argument("--table", action="store_true", help="torch.profiler kernel table and do_bench, no ncu")
    args = ap.parse_args()
    dt = torch.float16 if args.dtype == "fp16" else torch.float32
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(16, 64, 56, 56, device="cuda", generator=g).to(dt)
    names = lc.explain(args.op).weights
    ws = {n: (torch.randn(64, 64, 3, 3, device="cuda", generator=g) * 0.5).to(dt) for n in names}
    gy = torch.randn(16, 64, 56, 56, device="cuda", generator=g).to(dt)
    leaves = [x] + list(ws.values())
    for t in leaves:
        t.requires_grad_(not args.fwd_only)

    def call():
        if args.fwd_only:
            with torch.no_grad():
                return lc.conv2d(x, args.op, ws, padding=1, reduce=args.reduce, backend="triton")
        y = lc.conv2d(x, args.op, ws, padding=1, reduce=args.reduce, backend="triton")
        return torch.autograd.grad(y, leaves, gy)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    if args.table:
        from torch.profiler import ProfilerActivity, profile
        from triton.testing import do_bench
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                call()
            torch.cuda.synchronize()
        print(f"{args.op} {args.dtype} {'fwd' if args.fwd_only else 'fwd+bwd'}: do_bench "
              f"{do_bench(call, warmup=25, rep=100, return_mode='median'):.4f} ms; kernels per call (ms):")
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
            if e.device_time_total > 0:
                print(f"  {e.device_time_total / 10 / 1e3:8.4f}  x{e.count / 10:g}  {e.key[:90]}")
        from lambdaconv.backends.triton import gluon
        for t in gluon.TUNE_LOG:  # the forward tuner's timings of each candidate
            print("  tuned:", t)
        return
    torch.cuda.profiler.start()
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
