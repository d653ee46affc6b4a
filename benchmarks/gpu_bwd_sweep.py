"""Backward kernels of the adder (N16 C64 O64 56x56) under settings, GPU time per kernel (profiler).

    PYTHONPATH=src python3 benchmarks/gpu_bwd_sweep.py

Each setting is a set of environment variables the triton backend reads per call
(LAMBDACONV_GLUON_BWD, LAMBDACONV_GLUON_GW_PER_SM, LAMBDACONV_GLUON_GX_BK, ...); the output is
one line per setting: every kernel's mean ms per fwd+bwd and the fwd+bwd do_bench median.
"""
from __future__ import annotations

import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import lambdaconv as lc

SETTINGS = [  # session 4: the predicated sign accumulation (LAMBDACONV_GLUON_SGN) against the selects
    {"LAMBDACONV_GLUON_BWD": "auto", "LAMBDACONV_GLUON_SGN": "0"},
    {"LAMBDACONV_GLUON_BWD": "auto", "LAMBDACONV_GLUON_SGN": "w"},
    {"LAMBDACONV_GLUON_BWD": "1", "LAMBDACONV_GLUON_SGN": "0"},
    {"LAMBDACONV_GLUON_BWD": "1", "LAMBDACONV_GLUON_SGN": "x"},
    {"LAMBDACONV_GLUON_BWD": "1", "LAMBDACONV_GLUON_SGN": "1"},
    {"LAMBDACONV_GLUON_BWD": "1", "LAMBDACONV_GLUON_SGN": "x", "LAMBDACONV_GLUON_GX_BK": "4"},
    {"LAMBDACONV_GLUON_BWD": "1", "LAMBDACONV_GLUON_SGN": "x", "LAMBDACONV_GLUON_GX_BK": "1"},
    {"LAMBDACONV_GLUON_BWD": "1", "LAMBDACONV_GLUON_SGN": "x", "LAMBDACONV_GLUON_GX_MAXNREG": "168"},
]


def main():
    from triton.testing import do_bench
    ops = sys.argv[1:] or ["adder"]
    torch.manual_seed(0)
    x = torch.randn(16, 64, 56, 56, device="cuda", requires_grad=True)
    gy = torch.randn(16, 64, 56, 56, device="cuda")
    for op in ops:
        names = lc.explain(op).weights
        ws = {n: (torch.randn(64, 64, 3, 3, device="cuda") * 0.1).requires_grad_() for n in names}
        leaves = [x] + list(ws.values())

        def step():
            return torch.autograd.grad(lc.conv2d(x, op, ws, padding=1, backend="triton"), leaves, gy)

        for st in SETTINGS:
            for key in [k for k in os.environ if k.startswith("LAMBDACONV_GLUON_")]:
                del os.environ[key]  # each setting from the defaults
            os.environ.update(st)
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    step()
                torch.cuda.synchronize()
            kern = {}
            for e in prof.key_averages():
                if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0:
                    kern[e.key[:40]] = e.device_time_total / 5 / 1e3
            top = sorted(kern.items(), key=lambda kv: -kv[1])[:4]
            ms = do_bench(step, warmup=10, rep=100, return_mode="median")
            print(f"{op} {st}: fwd+bwd {ms:.3f} ms | " + ", ".join(f"{k} {v:.3f}" for k, v in top), flush=True)


if __name__ == "__main__":
    main()
