"""`python -m lambdaconv.bench host`: host time per call of lambdaconv layers against nn.Conv2d.

Layers Conv2d(2, 2, 3, padding=1) on an input (1, 2, 4, 4) that requires grad, one CPU thread:
the convolution itself is a few microseconds, the rest is the per-call Python and dispatch cost
that dominates eager GPU timings at small sizes (on CUDA: the host time of the launches). Rows:
nn.Conv2d, lc offset, lc quadratic, the offset as plain torch ops (conv(x, A, bias - A.B), the
constant by one baddbmm) and the hand rewrite conv(x, A) - sum(A*B); --direct adds adder and
max-plus. fwd under no_grad, fwd+bwd = autograd.grad of input, weights and bias; float32 and
bfloat16 autocast. Times in the table are ms per call (1e-3 ms = 1 us).

    python -m lambdaconv.bench host [--device cuda] [--direct] [--terms] [--count-ops] [--profile "lc offset"]
"""
from __future__ import annotations

import cProfile
import io
import pstats

import torch

import lambdaconv as lc
from . import study, timing
from .decompose import hand_offset, plain_offset


def layers(device, direct: bool, terms: bool = False) -> dict:
    """name -> (fn of x, the leaves its gradient is taken of besides x)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1).to(device)
    off = lc.Conv2d(2, 2, 3, padding=1, op="offset").to(device)
    quad = lc.Conv2d(2, 2, 3, padding=1, op="quadratic").to(device)
    a, b, bias = off.A, off.B, off.bias

    def plain(x):
        return plain_offset(x, a, b, bias, 1)

    def hand(x):
        return hand_offset(x, a, b, bias, 1)

    out = {"nn.Conv2d": (conv, list(conv.parameters())), "lc offset": (off, [a, b, bias]),
           "lc quadratic": (quad, list(quad.parameters())), "plain offset": (plain, [a, b, bias]),
           "hand offset": (hand, [a, b, bias])}
    if direct:
        for name, op in (("lc adder", "adder"), ("lc max-plus", "dilation")):
            layer = lc.Conv2d(2, 2, 3, padding=1, op=op).to(device)
            out[name] = (layer, list(layer.parameters()))
    if terms:  # the layers study's terms-and-epilogue layers (Kervolution, SCS) at this size
        from .layers import LAYERS
        for name in ("kerv-poly", "kerv-gauss", "scs"):
            layer = LAYERS[name][0](2, 2, 3).to(device)
            out["lc " + name] = (layer, list(layer.parameters()))
    return out


def steps(device, direct: bool, terms: bool = False) -> dict:
    """(dtype label, layer, mode) -> step."""
    x = torch.randn(1, 2, 4, 4, device=device, requires_grad=True)
    gy = torch.randn(1, 2, 4, 4, device=device)
    out = {}
    for label, amp in (("float32", False), ("bf16 autocast", True)):
        for name, (f, params) in layers(device, direct, terms).items():
            leaves = [x] + params

            def step(f=f, leaves=leaves, amp=amp):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
                    y = f(x)
                return torch.autograd.grad(y, leaves, gy.to(y.dtype))

            def fwd(f=f, amp=amp):
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp,
                                                     cache_enabled=False):
                    return f(x)
            out[(label, name, "fwd+bwd")] = step
            out[(label, name, "fwd")] = fwd
    return out


def aten_ops(fn) -> int:
    """aten ops the profiler records for one call (top-level and nested), after a warm-up."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main(argv=None) -> list:
    p = study.parser("host", __doc__)
    p.add_argument("--direct", action="store_true", help="also the direct ops adder and max-plus")
    p.add_argument("--terms", action="store_true", help="also Kervolution and SCS (op dicts with post=)")
    p.add_argument("--count-ops", action="store_true", help="aten ops per call (torch.profiler) in the note")
    p.add_argument("--profile", metavar="LAYER", help="print a cProfile of 200 float32 fwd+bwd calls of LAYER")
    args = p.parse_args(argv)
    args.threads = args.threads or 1
    device = study.setup(args)
    args.rounds = args.rounds or 200
    fns = steps(device, args.direct, args.terms)
    by = {k: {"op": "Conv2d(2, 2, 3, padding=1)", "shape": "N1C2O2H4k3", "mode": k[2], "method": k[1], "dtype": k[0]} for k in fns}
    times, errors = timing.interleaved(fns, args.rounds, device, warmup=50)
    study.timed(by, times, errors)
    if args.count_ops:
        for k, fn in fns.items():
            by[k]["note"] = f"{aten_ops(fn)} aten ops"
    rows = list(by.values())
    study.ratios(rows, "nn.Conv2d", key=lambda r: (r["mode"], r["dtype"]))
    if args.profile:
        fn = fns[("float32", args.profile, "fwd+bwd")]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            fn()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
        print(f"cProfile: {args.profile} fwd+bwd, 200 calls\n{text.getvalue()}")
    return study.finish("host", rows, args, device)
