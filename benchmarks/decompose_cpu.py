"""CPU benchmark of the decompose backend against F.conv2d at the same shape (issue 3's CPU bars).

    PYTHONPATH=src python benchmarks/decompose_cpu.py            # bars: offset <= 1.3x, quadratic <= 2.4x
    PYTHONPATH=src python benchmarks/decompose_cpu.py --terms    # term-count threshold: decompose vs tiled

Shape N8 C32 O32 32x32 k3 pad1, forward, torch.set_num_threads(2). Every variant is timed in the
same run, interleaved (one call of each per round, in a rotating order), and the median over
rounds is reported, so that load from other processes hits every variant alike (with the minimum
and the per-round ratio beside it). Malloc thresholds are fixed as in the project's bench
(--glibc-malloc keeps glibc's adaptive ones: results *_glibc).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import lambdaconv as lc
from lambdaconv.bench.timing import steady_malloc
from lambdaconv.ir import resolve_op


def interleaved(fns: dict, rounds: int, warmup: int = 3, raw: bool = False) -> dict:
    """Median seconds per call of each fn, timed round-robin (raw=True: every time, per round)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times if raw else {n: statistics.median(v) for n, v in times.items()}


def bars(rounds: int, grad: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    N, C, O, S, k = 8, 32, 32, 32, 3
    x = torch.randn(N, C, S, S, generator=g)
    A, B = torch.randn(O, C, k, k, generator=g) * 0.1, torch.randn(O, C, k, k, generator=g)
    bias = torch.randn(O, generator=g)
    fns = {
        "F.conv2d": lambda: F.conv2d(x, A, bias, padding=1),
        "offset": lambda: lc.conv2d(x, "offset", {"A": A, "B": B}, bias, padding=1),
        "quadratic": lambda: lc.conv2d(x, "quadratic", {"A": A, "B": B}, bias, padding=1),
        "hand offset": lambda: F.conv2d(x, A, bias - (A * B).sum((1, 2, 3)), padding=1),
    }
    for op in ("offset", "quadratic"):
        assert lc.explain(op).strategy == "decompose"
    with torch.set_grad_enabled(grad):
        if grad:
            for t in (x, A, B, bias):
                t.requires_grad_()
        raw = interleaved(fns, rounds, raw=True)
    t = {n: statistics.median(v) for n, v in raw.items()}
    base = t["F.conv2d"]
    # On a shared 2-core machine another process can stall one of the two OpenMP threads, and
    # every call in that window takes ~16-45 ms instead of ~0.5: a median over all rounds mixes the
    # two regimes. The per-round ratio (each variant against the conv timed next to it) and the
    # minimum (the unstalled time) are reported beside it.
    per_round = {n: statistics.median(a / c for a, c in zip(v, raw["F.conv2d"])) for n, v in raw.items()}
    return {"shape": "N8 C32 O32 32x32 k3 pad1", "grad_enabled": grad, "rounds": rounds,
            "median_ms": {n: v * 1e3 for n, v in t.items()},
            "ratio_to_conv2d": {n: v / base for n, v in t.items()},
            "min_ms": {n: min(v) * 1e3 for n, v in raw.items()},
            "ratio_of_minimums": {n: min(v) / min(raw["F.conv2d"]) for n, v in raw.items()},
            "median_per_round_ratio": per_round}


def terms(rounds: int) -> dict:
    """Polynomials sum_{j=1..T} A_j x**j: decompose (T stacked terms) vs the direct tiled path."""
    g = torch.Generator().manual_seed(0)
    N, C, O, S, k = 8, 32, 32, 32, 3
    x = torch.randn(N, C, S, S, generator=g) * 0.5
    from lambdaconv import plan
    plan.MAX_TERMS = 10 ** 6  # measure past the threshold this measurement sets
    plan._plan.cache_clear()
    from lambdaconv.ir.sympy_bridge import separate
    out = {}
    # Long polynomials (the direct path's cost grows with the op too), then compact ops whose
    # expansion is long (the direct path's cost does not grow): the worst case for decompose.
    cases = [(T, " + ".join(f"A{j}*x**{j}" for j in range(1, T + 1))) for T in (1, 2, 4, 8, 16, 32, 48)]
    cases += [(p, f"(x*A1 + 1)**{p}") for p in (3, 6, 9, 12)]
    for T, op in cases:
        names = resolve_op(op).weight_names
        ws = {n: torch.randn(O, C, k, k, generator=g) * 0.1 for n in names}
        assert len(separate(resolve_op(op).expr).terms) == T
        fns = {b: (lambda b=b: lc.conv2d(x, op, ws, padding=1, backend=b)) for b in ("decompose", "tiled")}
        with torch.no_grad():
            t = interleaved(fns, rounds, warmup=1)
        out[op] = {"terms": T, "decompose_ms": t["decompose"] * 1e3, "tiled_ms": t["tiled"] * 1e3,
                  "tiled_over_decompose": t["tiled"] / t["decompose"]}
        print(f"{op[:30]:30s} T={T:3d}  decompose {t['decompose'] * 1e3:8.2f} ms   tiled {t['tiled'] * 1e3:8.2f} ms   "
              f"tiled/decompose {t['tiled'] / t['decompose']:.1f}x", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--terms", action="store_true", help="measure the term-count threshold instead")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--glibc-malloc", action="store_true",
                    help="keep glibc's adaptive malloc thresholds (results *_glibc): see below")
    args = ap.parse_args()
    # As the project's bench (lambdaconv.bench.timing.steady_malloc): fixed malloc thresholds by
    # default. With glibc's adaptive ones the quadratic's stacked input (2 MiB) is mapped fresh on
    # every call and its page faults cost ~1.5 ms here, 3x the conv itself (measured: 2.1 ms vs
    # 0.85 ms per call); --glibc-malloc shows that case.
    tag = "_glibc" if args.glibc_malloc else ""
    malloc = "glibc adaptive" if args.glibc_malloc else \
        ("steady: blocks up to 32 MiB kept for reuse" if steady_malloc() else "unchanged (not glibc)")
    torch.set_num_threads(2)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
            platform.machine(), "python": sys.version.split()[0]}
    os.makedirs(args.out, exist_ok=True)
    if args.terms:
        res = {"meta": meta, "malloc": malloc, "terms": terms(max(3, args.rounds // 10))}
        with open(os.path.join(args.out, "decompose_cpu_terms.json"), "w") as f:
            json.dump(res, f, indent=2)
        return
    res = {"meta": meta, "forward": bars(args.rounds, False), "forward_with_grad": bars(args.rounds, True)}
    f = res["forward"]
    res["bars"] = {f"{op} <= {bar}x": {k: f[k][op] <= bar for k in ("ratio_to_conv2d", "median_per_round_ratio",
                                                                     "ratio_of_minimums")}
                   for op, bar in (("offset", 1.3), ("quadratic", 2.4))}
    res["malloc"] = malloc
    with open(os.path.join(args.out, f"decompose_cpu{tag}.json"), "w") as f:
        json.dump(res, f, indent=2)
    lines = ["# decompose backend, CPU (forward, N8 C32 O32 32x32 k3 pad1, 2 threads)", "",
             f"torch {meta['torch']}, {meta['threads']} threads, {args.rounds} interleaved rounds; malloc: "
             f"{res['malloc']}.", "",
             "| variant | median ms | ratio of medians | min ms | ratio of minimums | median per-round ratio |",
             "|---|---|---|---|---|---|"]
    for key, title in (("forward", "no grad"), ("forward_with_grad", "grad enabled (forward only)")):
        a = res[key]
        lines.append(f"| **{title}** | | | | | |")
        for n in a["median_ms"]:
            lines.append(f"| {n} | {a['median_ms'][n]:.3f} | {a['ratio_to_conv2d'][n]:.2f}x | {a['min_ms'][n]:.3f} | "
                         f"{a['ratio_of_minimums'][n]:.2f}x | {a['median_per_round_ratio'][n]:.2f}x |")
    lines += ["", "Bars (no grad), by ratio of medians / median per-round ratio / ratio of minimums: " + "; ".join(
        f"{k}: " + " / ".join("met" if ok else "MISSED" for ok in v.values()) for k, v in res["bars"].items()),
              "", f"Command: `PYTHONPATH=src python benchmarks/decompose_cpu.py{' --glibc-malloc' if tag else ''}`"]
    with open(os.path.join(args.out, f"decompose_cpu{tag}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
