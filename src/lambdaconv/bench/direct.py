"""`python -m lambdaconv.bench direct`: direct ops (evaluated tap by tap) against their peers.

For each op, shape and dtype: lambdaconv (backend "auto": the generated triton kernels on CUDA,
tiled on CPU), torch.compile of unfold + broadcast, torch.cdist for the L1 op, unfold + broadcast
eager (--eager: 7-28 GiB on the GPU shapes) and nn.Conv2d at the same shape, timed in the same
interleaved rounds: the forward under no_grad ("fwd", the call as the caller waits for it), on CUDA
its GPU work alone ("fwd GPU work", CUDA graphs; the roofline fraction in the note) and forward +
backward ("fwd+bwd", gradients of x and every weight, with its peak memory on CUDA). Peers run in
float32 only. --settings "gluon_bwd=1" adds lambdaconv rows under those lambdaconv.settings (each in
rounds of its own: changing settings clears the kernels' decisions).

--sweep (CUDA): the forward's GPU work under each Gluon config (gluon.CONFIGS, or --configs),
against the portable kernel, with register caps (--maxnreg); every config is captured under its
own settings, then all are timed in the same rounds. CONFIGS is restored afterwards.

    python -m lambdaconv.bench direct --device cuda --out benchmarks/results
    python -m lambdaconv.bench direct --device cuda --settings gluon_bwd=1 --ops adder
    python -m lambdaconv.bench direct --device cuda --sweep --ops adder --dtypes float16 --staged-only
"""
from __future__ import annotations

import torch

from .. import settings
from . import cases, methods, study, timing

DEFAULT_OPS = "adder,dilation,sigmoid(A*x)*B"
DEFAULT_SHAPES = {"cpu": "N8C32O32H32k3", "cuda": "N16C64O64H56k3,N16C256O256H14k3"}
PEERS = {"nn.Conv2d", "compile", "cdist"}


def _roofline(taps: int, ms: float, roof: float) -> str:
    return f"{100 * taps / (ms * 1e-3) / roof:.0f}% of roofline"


def _time_group(ms: list, x, gy, shape, args, device, key: dict, tag: str = "") -> list:
    """fwd, fwd GPU work (CUDA) and fwd+bwd rows of the methods ms (timed together)."""
    rows = []
    live = [m for m in ms if m.fn is not None]
    fwd = {m.name: timing.make_step(m.fn, x, m.weights, None, False) for m in live}
    modes = [("fwd", lambda: timing.interleaved(fwd, args.rounds, device))]
    if device.type == "cuda":
        modes.append(("fwd GPU work", lambda: timing.gpu_work(fwd, args.rounds, device)))
    if not args.no_backward:
        for t in [x] + [t for m in live for t in m.weights.values()]:
            t.requires_grad_(True)
        bwd = {m.name: timing.make_step(m.fn, x, m.weights, gy, True) for m in live}
        modes.append(("fwd+bwd", lambda: timing.interleaved(bwd, args.rounds, device)))
    for mode, measure in modes:
        named = {m.name: {**key, "mode": mode, "method": m.name + tag, "note": m.error or m.note or None}
                 for m in ms}
        study.timed(named, *measure())
        for r in named.values():
            if mode.startswith("fwd") and "+" not in mode and r.get("ms") and device.type == "cuda":
                r["note"] = _roofline(shape.taps, r["ms"], args.roofline)
        if mode == "fwd+bwd" and device.type == "cuda":
            for m in live:
                if named[m.name].get("ms"):
                    named[m.name]["MiB"] = timing.cuda_peak_bytes(bwd[m.name], device) / 2 ** 20
        rows += named.values()
    for t in [x] + [t for m in live for t in m.weights.values()]:
        t.requires_grad_(False)
    return rows


def run(args, device) -> list:
    from .cli import _recompile_room
    ops = cases.parse_ops(args.ops)
    shapes = cases.parse_shapes(args.shapes or DEFAULT_SHAPES[device.type])
    dtypes = [d.strip() for d in (args.dtypes or ("float32,float16" if device.type == "cuda" else "float32"))
              .split(",")]
    wanted = {"lambdaconv"} | (set() if args.no_peers else PEERS | ({"unfold"} if args.eager else set()))
    overrides = [study.parse_settings(s) for s in args.settings]
    if device.type == "cuda":
        timing.warm_gpu(device)
    rows = []
    with _recompile_room(len(ops) * len(shapes)):
        for case in ops:
            for shape in shapes:
                for dname in dtypes:
                    dtype = study.DTYPES[dname]
                    x, ws = methods.make_inputs(case, shape, device, dtype)
                    gy = torch.randn(shape.n, shape.o, *shape.out_hw, device=device, dtype=dtype)
                    key = {"op": f"{case.label} ({case.reduce})", "shape": str(shape), "dtype": dname}
                    want = wanted if dtype == torch.float32 else {"lambdaconv"}
                    ms = methods.methods_for(case, shape, x, ws, want, device, dtype)
                    rows += _time_group(ms, x, gy, shape, args, device, key)
                    for ov in overrides:
                        with settings.override(**ov):
                            ours = methods.methods_for(case, shape, x, ws, {"lambdaconv"}, device, dtype)
                            tag = " [" + ",".join(f"{k}={v}" for k, v in ov.items()) + "]"
                            rows += _time_group(ours, x, gy, shape, args, device, key, tag)
                    del x, ws, gy
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    study.ratios(rows, "lambdaconv")
    return rows


def _configs(args, gluon, staged) -> list:
    cfgs = ([gluon.CONFIGS[int(i)] for i in args.configs.split(",")] if args.configs else list(gluon.CONFIGS))
    cfgs += [tuple(int(v) for v in c.split(",")) for c in (args.extra or "").split(";") if c.strip()]
    return [c for c in cfgs if staged.is_staged(c)] if args.staged_only else cfgs


def sweep(args, device) -> list:
    """Forward GPU work of each Gluon config (and register cap) against the portable kernel."""
    import lambdaconv as lc
    from ..backends.triton import gluon, gluon_staged
    ops = cases.parse_ops(args.ops)
    shapes = cases.parse_shapes(args.shapes or DEFAULT_SHAPES["cuda"])
    dtypes = [d.strip() for d in (args.dtypes or "float32").split(",")]
    caps = [int(v) for v in args.maxnreg.split(",")] if args.maxnreg else [None]
    base, rows = list(gluon.CONFIGS), []
    timing.warm_gpu(device)
    try:
        for case in ops:
            for shape in shapes:
                for dname in dtypes:
                    x, ws = methods.make_inputs(case, shape, device, study.DTYPES[dname])
                    key = {"op": f"{case.label} ({case.reduce})", "shape": str(shape), "dtype": dname,
                           "mode": "fwd GPU work"}

                    def f():
                        with torch.no_grad():
                            return lc.conv2d(x, case.op, ws, reduce=case.reduce, padding=shape.p, stride=shape.s,
                                             dilation=shape.d, groups=shape.g, backend="triton")
                    graphs, named, errors, outs = {}, {}, {}, {}
                    cands = [("portable", None, None)] + [(f"gluon {c}", c, cap) for c in _configs(
                        args, gluon, gluon_staged) for cap in caps]
                    for name, cfg, cap in cands:
                        if cap is not None:
                            name += f" maxnreg {cap}"
                        named[name] = {**key, "method": name}
                        ov = {"gluon": "0"} if cfg is None else {"gluon": "strict", **(
                            {"gluon_fwd_maxnreg": cap} if cap is not None else {})}
                        try:
                            with settings.override(**ov):
                                if cfg is not None:
                                    gluon.CONFIGS[:] = [cfg]
                                    gluon.clear_decisions()  # cached per CONFIGS object, which is the same list
                                outs[name] = f().float()
                                graphs[name] = timing.cuda_graph(f, 10)[0]
                        except Exception as err:
                            errors[name] = timing.describe(err)
                        finally:
                            gluon.CONFIGS[:] = base
                            gluon.clear_decisions()
                    times, more = timing.replay(graphs, args.rounds, device)
                    study.timed(named, times, {**errors, **more})
                    ref = outs.get("portable")
                    for name, r in named.items():
                        if r.get("ms"):
                            err = "" if ref is None else \
                                f"; rel err {((outs[name] - ref).norm() / ref.norm()).item():.1e} vs portable"
                            r["note"] = _roofline(shape.taps, r["ms"], args.roofline) + err
                    rows += named.values()
                    del x, ws, graphs, outs
                    torch.cuda.empty_cache()
    finally:
        gluon.CONFIGS[:] = base
        gluon.clear_decisions()
    study.ratios(rows, "portable")
    return rows


def main(argv=None) -> list:
    p = study.parser("direct", __doc__)
    p.add_argument("--ops", default=DEFAULT_OPS, help=f"presets or op strings[:reduce] (default {DEFAULT_OPS!r})")
    p.add_argument("--shapes", help="comma list like N16C64O64H56k3 (default: two GPU shapes; CPU N8C32O32H32k3)")
    p.add_argument("--dtypes", help="comma list (default float32,float16 on CUDA; --sweep float32)")
    p.add_argument("--no-peers", action="store_true", help="lambdaconv rows only")
    p.add_argument("--eager", action="store_true", help="also unfold + broadcast eager (slow, GiBs)")
    p.add_argument("--no-backward", action="store_true", help="forward rows only")
    p.add_argument("--settings", action="append", default=[], metavar="NAME=V,...",
                   help="more lambdaconv rows under these lambdaconv.settings (repeatable)")
    p.add_argument("--roofline", type=float, default=timing.ROOFLINE_TAPS_PER_S, help="taps/s for the roofline")
    p.add_argument("--sweep", action="store_true", help="the Gluon forward configs instead (CUDA)")
    p.add_argument("--configs", help="--sweep: indices into gluon.CONFIGS (default all)")
    p.add_argument("--extra", help="--sweep: more configs written out, 'a,b,...;c,d,...'")
    p.add_argument("--staged-only", action="store_true", help="--sweep: the shared-memory staged configs only")
    p.add_argument("--maxnreg", help="--sweep: register caps to time each config with, e.g. '0,80,128'")
    args = p.parse_args(argv)
    device = study.setup(args, cuda_only=args.sweep)
    args.rounds = args.rounds or (20 if device.type == "cuda" else 5)
    try:
        rows = sweep(args, device) if args.sweep else run(args, device)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    return study.finish("direct sweep" if args.sweep else "direct", rows, args, device)
