"""`python -m lambdaconv.bench decompose`: separable ops against nn.Conv2d at the same shape.

Variants, timed in the same interleaved rounds: nn.Conv2d (F.conv2d with a bias), the hand rewrite
of the offset layer (conv(x, A) - sum(A*B), plain torch ops), the same with the constant folded
into the bias by one baddbmm, lc offset and lc quadratic (the decompose backend). Forward under
no_grad, or with --backward forward + the gradients of x, the weights and the bias. On CUDA the
rows are the call (host time included) and the GPU work alone (CUDA graphs). --autocast runs
everything under bfloat16 autocast.

--terms: ops whose expansion has T terms, decompose (T stacked terms in one conv) against each
direct backend that runs on the device, forward: where decomposing stops paying (plan.MAX_TERMS).

    python -m lambdaconv.bench decompose --threads 2                 # CPU: N8C32O32H32k3
    python -m lambdaconv.bench decompose --device cuda --backward     # N16C64O64H56k3
    python -m lambdaconv.bench decompose --terms
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import lambdaconv as lc
from ..backends import registry
from ..functional import prepare
from . import cases, methods, study, timing

DEFAULT_SHAPES = {"cpu": "N8C32O32H32k3", "cuda": "N16C64O64H56k3"}


def plain_offset(x, a, b, bias, padding):
    """The offset layer as plain torch ops: conv(x, A, bias - sum(A*B)), the constant by one baddbmm."""
    o = a.shape[0]
    bb = torch.baddbmm(bias.view(o, 1, 1), a.reshape(o, 1, -1), b.reshape(o, -1, 1), alpha=-1).view(o)
    return F.conv2d(x, a, bb, padding=padding)


def hand_offset(x, a, b, bias, padding):
    """The hand rewrite of the offset layer: conv(x, A) - sum(A*B), plain torch ops."""
    return F.conv2d(x, a, bias, padding=padding) - (a * b).sum((1, 2, 3)).view(1, -1, 1, 1)


def variants(shape: cases.Shape) -> dict:
    """name -> fn(x, weights) over weights {A, B, bias}: nn.Conv2d and the offset / quadratic layers."""
    p = shape.p
    return {
        "nn.Conv2d": lambda x, ws: F.conv2d(x, ws["A"], ws["bias"], padding=p),
        "hand offset": lambda x, ws: hand_offset(x, ws["A"], ws["B"], ws["bias"], p),
        "plain offset": lambda x, ws: plain_offset(x, ws["A"], ws["B"], ws["bias"], p),
        "lc offset": lambda x, ws: lc.conv2d(x, "offset", {"A": ws["A"], "B": ws["B"]}, ws["bias"], padding=p),
        "lc quadratic": lambda x, ws: lc.conv2d(x, "quadratic", {"A": ws["A"], "B": ws["B"]}, ws["bias"], padding=p),
    }


def _autocast(fn, device, on: bool):
    if not on:
        return fn

    def f(x, ws):
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False):
            return fn(x, ws)
    return f


def bars(args, device) -> list:
    shape = cases.parse_shape(args.shape or DEFAULT_SHAPES[device.type])
    for op in ("offset", "quadratic"):
        assert lc.explain(op).strategy == "decompose"
    (case,) = cases.parse_ops("offset")
    x, ws = methods.make_inputs(case, shape, device, torch.float32)
    ws = {"A": ws["A"] * 0.2, "B": ws["B"], "bias": torch.randn(shape.o, device=device)}
    gy = torch.randn(shape.n, shape.o, *shape.out_hw, device=device)
    if args.backward:
        for t in [x, *ws.values()]:
            t.requires_grad_(True)
    fns = {n: _autocast(f, device, args.autocast) for n, f in variants(shape).items()}
    steps = {n: timing.make_step(f, x, ws, gy, args.backward) for n, f in fns.items()}
    mode = "fwd+bwd" if args.backward else "fwd"
    dtype = "bf16 autocast" if args.autocast else "float32"
    rows = {n: {"op": "offset / quadratic", "shape": str(shape), "mode": mode, "method": n, "dtype": dtype}
            for n in steps}
    study.timed(rows, *timing.interleaved(steps, args.rounds, device))
    out = list(rows.values())
    if device.type == "cuda":
        gpu = {n: dict(r, mode=mode + " GPU work", ms=None, note=None) for n, r in rows.items()}
        study.timed(gpu, *timing.gpu_work(steps, args.rounds, device))
        out += list(gpu.values())
    study.ratios(out, "nn.Conv2d")
    return out


def terms(args, device) -> list:
    """Decompose against every direct backend that supports the call, ops of a growing expansion."""
    shape = cases.parse_shape(args.shape or "N8C32O32H32k3")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape.n, shape.c, shape.h, shape.w, device=device, generator=g) * 0.5
    ops = [" + ".join(f"A{j}*x**{j}" for j in range(1, t + 1)) for t in (1, 4, 16)]
    ops += [f"(x*A1 + 1)**{p}" for p in (3, 6, 12)]
    rows = []
    for op in ops:
        spec = lc.explain(op)
        ws = {n: torch.randn(shape.o, shape.c, shape.k, shape.k, device=device, generator=g) * 0.1
              for n in spec.weights}
        call = prepare(2, x, op, ws, None, 1, shape.p, 1, 1, None, "zeros", "auto")[3]
        names = [n for n in registry.names() if n not in ("reference", "auto") and
                 registry.unsupported(registry.get(n), call) is None]
        fns = {b: (lambda b=b: lc.conv2d(x, op, ws, padding=shape.p, backend=b)) for b in names}
        with torch.no_grad():
            times, errors = timing.interleaved(fns, args.rounds, device, warmup=1)
        named = {b: {"op": op, "shape": str(shape), "mode": "fwd", "method": b, "dtype": "float32",
                     "note": f"{len(spec.terms)} terms"} for b in fns}
        study.timed(named, times, errors)
        rows += named.values()
    study.ratios(rows, "decompose")
    return rows


def main(argv=None) -> list:
    p = study.parser("decompose", __doc__)
    p.add_argument("--shape", help="one shape (default: N8C32O32H32k3 on CPU, N16C64O64H56k3 on CUDA)")
    p.add_argument("--backward", action="store_true", help="forward + backward instead of the forward")
    p.add_argument("--autocast", action="store_true", help="under bfloat16 autocast")
    p.add_argument("--terms", action="store_true", help="the term threshold instead (forward)")
    args = p.parse_args(argv)
    device = study.setup(args)
    args.rounds = args.rounds or (5 if args.terms else 30)
    if device.type == "cpu":
        timing.steady_malloc()  # as compare: freed blocks reused, not mapped afresh per call
    rows = terms(args, device) if args.terms else bars(args, device)
    return study.finish("decompose terms" if args.terms else "decompose", rows, args, device)
