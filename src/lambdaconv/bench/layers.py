"""`python -m lambdaconv.bench layers`: whole layers against the layer each is measured by.

Each layer is one module call (lc.Conv2d with terms, post= or a two-level reduction;
lc.ConvTranspose2d), timed in the same interleaved rounds as its reference layer on the same
input: the forward under no_grad ("fwd"), on CUDA its GPU work alone ("fwd GPU work", CUDA
graphs), and forward + backward ("fwd+bwd": gradients of the input and every parameter). `ratio`
is the layer's time over its reference's. The shape (--shape) is the input of the Conv2d layers;
a transposed layer upsamples it by 2 (stride 2, padding 1, output_padding 1), and "adder" /
"max-plus" Conv2d are its references: the same number of taps per call.

    python -m lambdaconv.bench layers --device cuda --out benchmarks/results
    python -m lambdaconv.bench layers --layers kerv-poly,scs --shape N4C16O16H32k3 --device cpu
"""
from __future__ import annotations

import torch
import torch.nn as nn

import lambdaconv as lc
from . import cases, study, timing

SCS = "sign(s) * (abs(s) / ((sqrt(nx + 1e-6) + q) * (sqrt(nw) + q))) ** p"


def _conv(**kw):
    return lambda c, o, k: lc.Conv2d(c, o, k, padding=k // 2, bias=False, **kw)


def _up(**kw):
    return lambda c, o, k: lc.ConvTranspose2d(c, o, k, stride=2, padding=k // 2, output_padding=1, bias=False, **kw)


# name -> (build(in_channels, out_channels, kernel) -> module, the reference layer's name)
LAYERS = {
    "nn.Conv2d": (lambda c, o, k: nn.Conv2d(c, o, k, padding=k // 2, bias=False), None),
    "kerv-poly": (_conv(op={"s": "x*W"}, post="(s + c) ** 2", shapes={"c": "scalar"}, init={"c": 1.0}),
                  "nn.Conv2d"),
    "kerv-gauss": (_conv(op={"d": "(x-W)**2"}, reduce="mean", post="exp(-gamma * d)", shapes={"gamma": "filter"},
                         init={"W": "normal", "gamma": 0.5}), "nn.Conv2d"),
    "scs": (_conv(op={"s": "x*W", "nx": "x*x", "nw": "W*W"}, post=SCS, shapes={"p": "filter", "q": "scalar"},
                  init={"p": 2.0, "q": 0.1}), "nn.Conv2d"),
    "max-plus": (_conv(op="dilation"), None),
    "max-sum": (_conv(op="dilation", reduce=("max", "sum")), "max-plus"),
    "adder": (_conv(op="adder"), None),
    "nn.ConvTranspose2d": (lambda c, o, k: nn.ConvTranspose2d(c, o, k, 2, k // 2, 1, bias=False), None),
    "T-linear": (_up(op="x*W"), "nn.ConvTranspose2d"),
    "T-adder": (_up(op="adder"), "adder"),
    "T-max-plus": (_up(op="dilation"), "max-plus"),
}
DEFAULT = "kerv-poly,kerv-gauss,scs,max-sum,T-linear,T-adder,T-max-plus"


def parser():
    p = study.parser("layers", __doc__)
    p.add_argument("--layers", default=DEFAULT, help=f"comma list of {', '.join(LAYERS)} (default {DEFAULT!r}; "
                                                     "each layer's reference is added)")
    p.add_argument("--shape", default=None, help="N, C, O, H, k of the input (default CUDA N16C64O64H56k3, "
                                                 "CPU N4C16O16H32k3)")
    p.add_argument("--dtype", default="float32", choices=list(study.DTYPES))
    p.add_argument("--no-backward", action="store_true", help="forward rows only")
    return p


def _names(text: str) -> list:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in LAYERS]
    if bad or not names:
        raise SystemExit(f"error: bad --layers {text!r}: expected a comma list of {', '.join(LAYERS)}")
    out = []
    for n in names:
        ref = LAYERS[n][1]
        out += [m for m in (ref, n) if m and m not in out]
    return out


def main(argv=None) -> list:
    args = parser().parse_args(argv)
    device = study.setup(args)
    dtype = study.DTYPES[args.dtype]
    args.rounds = args.rounds or (20 if device.type == "cuda" else 5)
    try:
        shape = cases.parse_shape(args.shape or ("N16C64O64H56k3" if device.type == "cuda" else "N4C16O16H32k3"))
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    names = _names(args.layers)
    torch.manual_seed(0)
    x = torch.randn(shape.n, shape.c, shape.h, shape.w, device=device, dtype=dtype)
    mods = {n: LAYERS[n][0](shape.c, shape.o, shape.k).to(device=device, dtype=dtype) for n in names}
    if device.type == "cuda":
        timing.warm_gpu(device)
    fwd, bwd = {}, {}
    for n, m in mods.items():
        def f(m=m):
            with torch.no_grad():
                return m(x)

        def fb(m=m):
            xg = x.detach().requires_grad_(True)
            y = m(xg)
            torch.autograd.grad(y, [xg, *m.parameters()], torch.ones_like(y))
        fwd[n], bwd[n] = f, fb
    modes = [("fwd", lambda: timing.interleaved(fwd, args.rounds, device))]
    if device.type == "cuda":
        modes.append(("fwd GPU work", lambda: timing.gpu_work(fwd, args.rounds, device)))
    if not args.no_backward:
        modes.append(("fwd+bwd", lambda: timing.interleaved(bwd, args.rounds, device)))
    rows = []
    for mode, measure in modes:
        named = {n: {"op": n, "shape": str(shape), "mode": mode, "method": n, "dtype": args.dtype} for n in names}
        study.timed(named, *measure())
        for n, r in named.items():
            ref = LAYERS[n][1]
            if ref and r.get("ms") and named[ref].get("ms"):
                r["vs"], r["ratio"] = ref, r["ms"] / named[ref]["ms"]
        if mode == "fwd+bwd" and device.type == "cuda":
            for n, r in named.items():
                if r.get("ms"):
                    r["MiB"] = timing.cuda_peak_bytes(bwd[n], device) / 2 ** 20
        rows += named.values()
    return study.finish("layers", rows, args, device)


if __name__ == "__main__":
    main()
