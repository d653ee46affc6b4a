"""A/B timing of two lambdaconv trees on one GPU: `python -m lambdaconv.bench.ab --baseline OLD_SRC`.

Each round runs bench/ab_child.py once per tree, in a fresh process with that tree's src first on
PYTHONPATH, the order alternating between rounds; per case the median over rounds of the call time
(do_bench) and of the GPU work (CUDA-graph replay) is reported for both trees, with the ratio
new / old. The first round also compiles and tunes; it is timed like the rest (the tuner's choice
is per process), so use several rounds. Rows are appended to the results table when --out is given.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from .. import settings
from . import report

OPS = ["adder", "dilation", "sigmoid(A*x)*B", "x+W:logsumexp"]
SHAPES = {"N16C64O64H56k3": (16, 64, 64, 56, 3), "N16C256O256H14k3": (16, 256, 256, 14, 3)}
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ab_child.py")


def cases(ops, shapes, dtypes, modes) -> list:
    out = []
    for op in ops:
        name, _, reduce = op.partition(":")
        for s in shapes:
            for dt in dtypes:
                for m in modes:
                    out.append("|".join([name, reduce, ",".join(map(str, SHAPES[s])), dt, m]))
    return out


def run_child(src: str, keys: list, cache: str, timeout: int) -> dict:
    env = settings.child_environ(PYTHONPATH=os.path.abspath(src), LAMBDACONV_CACHE=cache)
    r = subprocess.run([sys.executable, CHILD, *keys], env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"child for {src} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def warm(src: str, keys: list, cache: str, n: int, timeout: int) -> None:
    """Compile every kernel first, in n processes at once over slices of the cases (triton's cache
    then serves both trees: their kernel sources hash the same when the generator is unchanged, and
    a changed one compiles in its timed rounds, which only the first round's medians can see).
    Their timings are thrown away: the processes share the GPU."""
    procs = [subprocess.Popen([sys.executable, CHILD, *keys[i::n]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=settings.child_environ(PYTHONPATH=os.path.abspath(src), LAMBDACONV_CACHE=cache))
             for i in range(n)]
    for pr in procs:
        try:
            pr.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pr.kill()
    print(f"warm-up: {n} processes done", file=sys.stderr, flush=True)


def _median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def table(keys, runs: dict) -> list:
    """Rows (case, old call, new call, ratio, old GPU work, new GPU work, ratio)."""
    rows = []
    for k in keys:
        cell = {}
        for side in ("old", "new"):
            cell[side] = [_median([r[k][i] for r in runs[side]]) for i in (0, 1)]
        ratio = [None if cell["old"][i] in (None, 0) or cell["new"][i] is None else cell["new"][i] / cell["old"][i]
                 for i in (0, 1)]
        rows.append((k, cell["old"][0], cell["new"][0], ratio[0], cell["old"][1], cell["new"][1], ratio[1]))
    return rows


def table_rows(rows, baseline: str, rounds: int) -> list:
    """Rows for the results table (report.append): each case's old and new medians, call and GPU work."""
    out = []
    for k, oc, nc, rc, og, ng, rg in rows:
        op, reduce, shape, dtype, mode = k.split("|")
        n, c, o, h, kk = shape.split(",")
        base = {"study": "ab", "op": f"{op} ({reduce or 'default'})", "shape": f"N{n}C{c}O{o}H{h}k{kk}",
                "dtype": dtype}
        for what, old, new, ratio in (("", oc, nc, rc), (" GPU work", og, ng, rg)):
            m = ("fwd" if mode == "fwd" else "fwd+bwd") + what
            if old is None or new is None:
                continue
            note = f"median of {rounds} rounds, old and new trees alternating"
            out.append(dict(base, mode=m, method=baseline, ms=old, note=note))
            out.append(dict(base, mode=m, method="this tree", ms=new, vs=baseline, ratio=ratio, note=note))
    return out


def markdown(rows) -> str:
    f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = ["| case (op, reduce, N,C,O,H,k, dtype, pass) | old call ms | new call ms | new/old | "
             "old GPU ms | new GPU ms | new/old |", "|---|---|---|---|---|---|---|"]
    for k, oc, nc, rc, og, ng, rg in rows:
        lines.append(f"| {k.replace('|', ' ')} | {f(oc)} | {f(nc)} | {f(rc)} | {f(og)} | {f(ng)} | {f(rg)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lambdaconv.bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="the old tree's src directory")
    p.add_argument("--new", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                   help="the new tree's src directory (default: this one)")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=int, default=400, help="seconds per child process")
    p.add_argument("--warm", type=int, default=0, help="compile first in this many processes at once (untimed)")
    p.add_argument("--out", help="write ab.json and ab.md here")
    p.add_argument("--table", help="append the rows to DIR/results.md too (e.g. benchmarks/results)")
    p.add_argument("--label", default="baseline", help="the baseline's name in the table (e.g. its commit)")
    a = p.parse_args(argv)
    keys = cases(a.ops.split(","), a.shapes.split(","), a.dtypes.split(","), a.modes.split(","))
    runs = {"old": [], "new": []}
    cache = os.path.join(settings.get().cache_dir or settings.default_cache_dir(), "ab")
    if a.warm:
        warm(a.new, keys, cache + "_warm", a.warm, a.timeout)
    for r in range(a.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for side in order:
            src = a.baseline if side == "old" else a.new
            runs[side].append(run_child(src, keys, cache + "_" + side, a.timeout))
            print(f"round {r + 1}/{a.rounds} {side} done", file=sys.stderr, flush=True)
        if len(runs["old"]) == len(runs["new"]):
            rows = _write(a.out, keys, runs)  # after every full round: a cut-off run keeps what it measured
    print(markdown(rows))
    if a.table:
        import torch
        report.append(a.table, table_rows(rows, a.label, a.rounds), report.run_meta(torch.device("cuda")))
    return rows


def _write(out, keys, runs):
    rows = table(keys, runs)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "ab.json"), "w") as f:
            json.dump({"keys": keys, "runs": runs, "rows": rows}, f, indent=1)
        with open(os.path.join(out, "ab.md"), "w") as f:
            f.write(f"{len(runs['old'])} rounds\n\n" + markdown(rows) + "\n")
    return rows


if __name__ == "__main__":
    main()
