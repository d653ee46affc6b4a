"""`python -m lambdaconv.bench [STUDY]`: the studies, and the default one ("compare": what is timed
against what, argument parsing and the run)."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shlex
import sys
import time

import torch

from . import cases, methods, report, study, timing

CHECK_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}
# the studies besides "compare": name -> (module, what it measures)
STUDIES = {
    "decompose": ("decompose", "separable ops (offset, quadratic) against nn.Conv2d; --terms: the term threshold"),
    "direct": ("direct", "direct ops vs peers: fwd, fwd GPU work, fwd+bwd; --sweep: the Gluon forward configs"),
    "host": ("host", "host time per call of tiny layers against nn.Conv2d"),
    "kernels": ("kernels", "per-kernel times of one call under settings; --ncu: a driver for Nsight Compute"),
    "warmup": ("warmup", "a layer's first fwd+bwd call in a new process, compile caches empty and warm"),
    "layers": ("layers", "whole layers (terms, post=, two-level, transposed) against their reference layers"),
    "sass": ("sass", "instructions per tap of a generated Gluon kernel (compiled for sm_90, no GPU needed)"),
}
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lambdaconv.bench",
        description="Time lambdaconv against nn.Conv2d, unfold+broadcast, torch.compile, cdist and "
                    "pytorch-nd-semiconv in one run (the default study, also `compare`); prints a markdown "
                    "table, appends it to the results table and plots it. Other studies: "
                    + "; ".join(f"`{k}`: {v[1]}" for k, v in STUDIES.items())
                    + " (`python -m lambdaconv.bench STUDY -h`).",
        epilog=cases.__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="fewer ops, a smaller shape, fewer rounds (<1 min on 2 cores)")
    p.add_argument("--ops", help=f"comma list of presets or op strings[:reduce] (default {cases.DEFAULT_OPS!r}; "
                                 f"--quick: {cases.QUICK_OPS!r})")
    p.add_argument("--shapes", help="comma list like N8C32O32H32k3 (default per device; see below)")
    p.add_argument("--dtype", default="float32", choices=list(study.DTYPES))
    p.add_argument("--backward", action="store_true", help="time forward + backward instead of the forward")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 10; CUDA 20; --quick 5)")
    p.add_argument("--methods", default=",".join(methods.ALL),
                   help="comma list of " + ", ".join(methods.ALL) + " ('backends': lambdaconv[NAME] rows)")
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile (its compiles take ~10 s each)")
    p.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    p.add_argument("--glibc-malloc", action="store_true",
                   help="CPU: keep glibc's adaptive malloc thresholds (default: fixed, see timing.steady_malloc)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 is steadier on a shared machine)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in cuDNN/cuBLAS (default off: fp32 is fp32)")
    p.add_argument("--roofline", type=float, default=timing.ROOFLINE_TAPS_PER_S,
                   help="CUDA-core taps/s for the roofline column (default: H100, 2 instructions per tap)")
    p.add_argument("--note", help="a line about the conditions (e.g. '2 cores shared with other jobs') for the report")
    p.add_argument("--out", help="append the rows to DIR/results.md and plot them to DIR/compare_<cpu|cuda>_"
                                 "<fwd|fwdbwd>.png (--plot names another file)")
    p.add_argument("--plot", help="the PNG's path (default: in --out, as above)")
    p.add_argument("--json", help="also write the full result (every field of every row) to this JSON file")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="measure nothing: merge these result files into one table and plot (e.g. runs made "
                        "where matplotlib is not installed, or split into several runs)")
    return p


def _progress(total: int):
    """tqdm bar on a terminal (stderr), nothing otherwise or without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="bench", unit="round", disable=None, leave=False)


def _meta(args, device, dtype) -> dict:
    meta = {"device": str(device), "device_name": report.device_name(device), "torch": torch.__version__, "python": sys.version.split()[0],
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "dtype": args.dtype,
            "backward": args.backward, "rounds": args.rounds, "tf32": args.tf32,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "command": "python -m lambdaconv.bench " + shlex.join(args.argv),
            "check_tol": CHECK_TOL[dtype], "roofline_taps_per_s": args.roofline}
    if args.note:
        meta["note"] = args.note
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        pass
    return meta


class _Group:
    """One (op, shape): its inputs and the methods timed against each other."""

    def __init__(self, case, shape, device, dtype, wanted, backward):
        self.case, self.shape = case, shape
        self.x, self.ws = methods.make_inputs(case, shape, device, dtype)
        self.methods = methods.methods_for(case, shape, self.x, self.ws, wanted, device, dtype)
        oh, ow = shape.out_hw
        self.gy = torch.randn(shape.n, shape.o, oh, ow, device=device, dtype=dtype) if backward else None
        if backward:
            for t in [self.x] + [t for m in self.methods for t in m.weights.values()]:
                t.requires_grad_(True)
        self.steps = {m.name: timing.make_step(m.fn, self.x, m.weights, self.gy, backward)
                      for m in self.methods if m.fn is not None}
        self.rows = {m.name: self._row(m) for m in self.methods}

    def _row(self, m) -> dict:
        r = {"op": self.case.label, "reduce": self.case.reduce, "shape": str(self.shape), "method": m.name,
             "taps": self.shape.taps}
        if m.backend:
            r["backend"] = m.backend
        if m.note:
            r["note"] = m.note
        if m.error:
            r["error"] = m.error
        return r

    def check(self, device):
        """Outputs of the methods that compute the op, against unfold's (else lambdaconv's)."""
        order = sorted((m for m in self.methods if m.fn is not None and m.same_function),
                       key=lambda m: m.name != "unfold")
        ref = ref_name = None
        for m in order:
            try:
                with torch.no_grad():
                    y = m.fn(self.x, m.weights)
            except Exception as err:
                self.rows[m.name]["error"] = timing.describe(err)
                self.steps.pop(m.name, None)
                continue
            if ref is None:
                ref, ref_name = y, m.name
            else:
                self.rows[m.name]["rel_err"] = methods.rel_err(y, ref)
                self.rows[m.name]["checked_against"] = ref_name
            del y
        del ref
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def memory(self, measure):
        for name, step in self.steps.items():
            if "error" not in self.rows[name]:
                try:
                    self.rows[name]["peak_mib"] = measure(step) / 2 ** 20
                except Exception as err:
                    self.rows[name]["error"] = "memory run: " + timing.describe(err)


def _recompile_room(groups: int):
    """Every group's torch.compile runs the same function code (unfold_conv's closure) at another
    shape or op, and dynamo counts those as recompiles of one function: past its limit (8) a
    fullgraph compile fails. Room for each group's graphs (no_grad and grad: 2) while we run."""
    try:
        import torch._dynamo.config as dc
    except ImportError:
        return contextlib.nullcontext()
    name = "recompile_limit" if hasattr(dc, "recompile_limit") else "cache_size_limit"
    return dc.patch(**{name: max(getattr(dc, name), 2 * groups + 8)})


def run(args) -> dict:
    device = study.setup(args)
    dtype = study.DTYPES[args.dtype]
    dev = "cuda" if device.type == "cuda" else "cpu"
    ops = cases.parse_ops(args.ops or (cases.QUICK_OPS if args.quick else cases.DEFAULT_OPS))
    shapes = cases.parse_shapes(args.shapes or (cases.QUICK_SHAPES if args.quick else cases.DEFAULT_SHAPES)[dev])
    args.rounds = args.rounds or (5 if args.quick else 20 if dev == "cuda" else 10)
    wanted = {m.strip() for m in args.methods.split(",") if m.strip()}
    unknown = wanted - set(methods.ALL)
    if unknown:
        raise SystemExit(f"unknown --methods {', '.join(sorted(unknown))}; expected {', '.join(methods.ALL)}")
    if args.no_compile:
        wanted.discard("compile")
    meta = _meta(args, device, dtype)
    if not args.no_memory and dev == "cpu":
        why = timing.CpuPeak.why_not()
        meta["memory_note"] = ("peak MiB: peak RSS growth during one call (VmHWM after /proc/self/clear_refs), "
                               "measured after all timing") if why is None else f"peak memory not measured: {why}"
    elif not args.no_memory:
        meta["memory_note"] = ("peak MiB: torch.cuda.max_memory_allocated during one call, "
                               "minus what was allocated before")

    if dev == "cpu":
        meta["malloc"] = "glibc adaptive" if args.glibc_malloc else \
            ("steady: blocks up to 32 MiB kept for reuse" if timing.steady_malloc() else "unchanged (not glibc)")
    groups = [_Group(c, s, device, dtype, wanted, args.backward) for c in ops for s in shapes]
    with _recompile_room(len(groups)):
        _measure(groups, args, device, meta)
    rows = []
    for g in groups:
        rs = list(g.rows.values())
        base = {m: g.rows[m].get("ms") for m in ("unfold", "lambdaconv") if m in g.rows}
        for r in rs:
            if r.get("ms"):
                for m, t in base.items():
                    if t:
                        r[f"vs_{m}"] = t / r["ms"]
                if dev == "cuda" and not args.backward:
                    r["roofline"] = r["taps"] / (r["ms"] * 1e-3) / args.roofline
        rows += rs
    return {"meta": meta, "rows": rows}


def _measure(groups, args, device, meta):
    """Time every group, then measure memory (CUDA: per group; CPU: after all timing)."""
    dev = device.type
    bar = _progress(sum(len(g.steps) + args.rounds for g in groups))
    tick = (lambda n: bar.update(1)) if bar is not None else None
    for g in groups:
        if bar is not None:
            bar.set_postfix_str(f"{g.case.label} {g.shape}")
        g.check(device)
        medians, errors = timing.interleaved(g.steps, args.rounds, device, tick=tick)
        for name, err in errors.items():
            g.rows[name]["error"] = err
        for name, (med, best) in medians.items():
            g.rows[name]["ms"], g.rows[name]["min_ms"] = med * 1e3, best * 1e3
        if dev == "cuda" and not args.no_memory:
            g.memory(lambda step: timing.cuda_peak_bytes(step, device))
    if bar is not None:
        bar.close()
    if dev == "cpu" and meta.get("memory_note", "").startswith("peak MiB"):
        cpu_mem = timing.CpuPeak()
        if not cpu_mem.fixed:
            meta["memory_note"] += " (malloc's mmap threshold could not be fixed: may miss reused heap memory)"
        for g in groups:
            g.memory(cpu_mem)


def merge(paths) -> dict:
    """Several result files of one device and mode as one (meta of the first, commands of all)."""
    res = None
    for path in paths:
        with open(path) as fh:
            r = json.load(fh)
        if res is None:
            res = r
            continue
        for key in ("device_name", "dtype", "backward"):
            if r["meta"][key] != res["meta"][key]:
                raise SystemExit(f"error: {path} has {key} {r['meta'][key]!r}, the first file "
                                 f"{res['meta'][key]!r}: not one table")
        res["meta"]["command"] += "` and `" + r["meta"]["command"]
        res["rows"] += r["rows"]
    return res


def table_rows(res: dict) -> list:
    """The compare run's rows as rows of the results table (ratio: against unfold + broadcast)."""
    meta, out = res["meta"], []
    for r in res["rows"]:
        note = r.get("error") or r.get("note", "")
        if r.get("roofline") is not None:
            note = f"{100 * r['roofline']:.0f}% of roofline" + (f"; {note}" if note else "")
        if r.get("rel_err") is not None and r["rel_err"] > meta["check_tol"]:
            note = (note + "; " if note else "") + f"MISMATCH: rel err {r['rel_err']:.2g} vs {r['checked_against']}"
        method = r["method"] + (f" ({r['backend']})" if r["method"] == "lambdaconv" and r.get("backend") else "")
        row = {"study": "compare", "op": f"{r['op']} ({r['reduce']})", "shape": r["shape"],
               "mode": "fwd+bwd" if meta["backward"] else "fwd", "method": method, "dtype": meta["dtype"],
               "ms": r.get("ms"), "MiB": r.get("peak_mib"), "note": note}
        if r.get("vs_unfold"):
            row.update(vs="unfold", ratio=1 / r["vs_unfold"])
        out.append(row)
    return out


def compare(argv) -> dict:
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        res = merge(args.from_json) if args.from_json else run(args)
    except ValueError as err:  # a bad --ops / --shapes
        raise SystemExit(f"error: {err}")
    print(report.markdown(res))
    meta = res["meta"]
    wrote = []
    if args.json:
        report.write_json(res, args.json)
        wrote.append(args.json)
    if args.out and not args.from_json:
        rows = table_rows(res)
        if args.note:
            for r in rows:
                r["note"] = f"{r['note']}; {args.note}" if r["note"] else args.note
        wrote.append(report.append(args.out, rows, report.run_meta(meta["device"])))
    plot = args.plot or (args.out and os.path.join(
        args.out, f"compare_{meta['device'].split(':')[0]}_{'fwdbwd' if meta['backward'] else 'fwd'}.png"))
    if plot:
        if report.plot(res, plot):
            wrote.append(plot)
        else:
            print("matplotlib is not installed: no PNG (pip install matplotlib)")
    if wrote:
        print("wrote " + ", ".join(wrote))
    return res


def main(argv=None):
    """`python -m lambdaconv.bench [STUDY] [options]`: STUDY is compare (the default) or one of STUDIES."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--model" or a.startswith("--model=") for a in argv):  # the whole-network study
        from . import model
        return model.main([a for a in argv if a != "compare"])
    if argv and argv[0] == "compare":
        argv = argv[1:]
    elif argv and argv[0] in STUDIES:
        mod = importlib.import_module(f".{STUDIES[argv[0]][0]}", __package__)
        return mod.main(argv[1:])
    return compare(argv)
