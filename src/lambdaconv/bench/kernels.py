"""`python -m lambdaconv.bench kernels`: where one call's time goes, kernel by kernel.

One op's forward (--fwd-only) or forward + backward through backend "auto" at one shape, warmed up
(compiled, tuned), then profiled with torch.profiler: one row per kernel (CUDA; aten op on CPU)
with its time per call, and a row for the whole call (interleaved rounds). Each --settings adds
the same under those lambdaconv.settings (e.g. the Gluon backward against the portable one).

--ncu: profile nothing; run one call between cudaProfilerStart and cudaProfilerStop, for
Nsight Compute to see only that call's kernels:

    ncu --profile-from-start off --section WarpStateStats ... \\
        python -m lambdaconv.bench kernels --ncu --op adder --fwd-only
    python -m lambdaconv.bench kernels --device cuda --op adder --settings gluon_bwd=0 --settings gluon_bwd=1
"""
from __future__ import annotations

import torch

import lambdaconv as lc
from .. import settings
from . import cases, methods, study, timing


def _call(case, shape, x, ws, gy, fwd_only: bool):
    geo = dict(stride=shape.s, padding=shape.p, dilation=shape.d, groups=shape.g)
    leaves = [x] + list(ws.values())

    def call():
        if fwd_only:
            with torch.no_grad():
                return lc.conv2d(x, case.op, ws, reduce=case.reduce, **geo)
        return torch.autograd.grad(lc.conv2d(x, case.op, ws, reduce=case.reduce, **geo), leaves, gy)
    return call


def kernel_rows(call, device, iters: int = 5) -> list:
    """(name, ms per call) of every kernel (CUDA) or aten op (CPU, self time) one call runs, longest first."""
    from torch.profiler import ProfilerActivity, profile
    act = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with profile(activities=[act]) as prof:
        for _ in range(iters):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    out = []
    for e in prof.key_averages():
        t = e.device_time_total if device.type == "cuda" else e.self_cpu_time_total
        if t > 0 and (device.type == "cuda" or e.key.startswith("aten::")):
            out.append((e.key[:80], t / iters / 1e3, e.count / iters))
    return sorted(out, key=lambda kv: -kv[1])


def main(argv=None) -> list:
    p = study.parser("kernels", __doc__)
    p.add_argument("--op", default="adder", help="a preset or op string[:reduce] (default adder)")
    p.add_argument("--shape", default="N16C64O64H56k3")
    p.add_argument("--dtype", default="float32", choices=list(study.DTYPES))
    p.add_argument("--fwd-only", action="store_true", help="the forward under no_grad (weights requiring grad, as parameters do)")
    p.add_argument("--settings", action="append", default=[], metavar="NAME=V,...",
                   help="lambdaconv.settings to profile under (repeatable; default: as they are)")
    p.add_argument("--top", type=int, default=8, help="kernels per setting in the table")
    p.add_argument("--ncu", action="store_true", help="one call between cudaProfilerStart/Stop, nothing else")
    args = p.parse_args(argv)
    device = study.setup(args, cuda_only=args.ncu)
    args.rounds = args.rounds or 10
    (case,) = cases.parse_ops(args.op)
    shape = cases.parse_shape(args.shape)
    dtype = study.DTYPES[args.dtype]
    x, ws = methods.make_inputs(case, shape, device, dtype)
    gy = torch.randn(shape.n, shape.o, *shape.out_hw, device=device, dtype=dtype)
    # Under --fwd-only the weights still require grad, as a module's parameters do under no_grad:
    # the inference path a user runs, not a bare-tensor call.
    x.requires_grad_(not args.fwd_only)
    for t in ws.values():
        t.requires_grad_(True)
    call = _call(case, shape, x, ws, gy, args.fwd_only)
    if args.ncu:
        for _ in range(3):
            call()
        torch.cuda.synchronize(device)
        torch.cuda.profiler.start()
        call()
        torch.cuda.synchronize(device)
        torch.cuda.profiler.stop()
        return []
    rows, mode = [], "fwd" if args.fwd_only else "fwd+bwd"
    key = {"op": f"{case.label} ({case.reduce})", "shape": str(shape), "dtype": args.dtype}
    for text in args.settings or [""]:
        ov = study.parse_settings(text)
        tag = "[" + (",".join(f"{k}={v}" for k, v in ov.items()) or "default settings") + "]"
        with settings.override(**ov):
            times, errors = timing.interleaved({"call": call}, args.rounds, device)
            total = {"call": {**key, "mode": mode, "method": f"call {tag}"}}
            study.timed(total, times, errors)
            rows.append(total["call"])
            if not errors:
                for name, ms, count in kernel_rows(call, device)[:args.top]:
                    rows.append({**key, "mode": mode + " kernel", "method": f"{name} {tag}", "ms": ms,
                                 "note": f"x{count:g} per call"})
    return study.finish("kernels", rows, args, device)
