"""Benchmark results as a markdown table, JSON, and a PNG bar chart (matplotlib, Agg backend)."""
from __future__ import annotations

import json
import math
import os


def _fmt_ms(v) -> str:
    return "" if v is None else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


def _fmt_x(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def markdown(res: dict) -> str:
    meta, rows = res["meta"], res["rows"]
    cuda = meta["device"].startswith("cuda")
    what = "forward + backward (grads of x and every weight)" if meta["backward"] else "forward (no_grad)"
    lines = [f"# lambdaconv.bench: {meta['device_name']}, {meta['dtype']}, {what}", "",
             f"torch {meta['torch']}, {meta['threads']} CPU threads, {meta['rounds']} interleaved rounds, "
             f"medians. `{meta['command']}`", ""]
    if meta.get("note"):
        lines += [f"Conditions: {meta['note']}", ""]
    lines += [
             "`vs unfold` / `vs lambdaconv`: how many times faster this row is than that one (> 1: faster), "
             "by medians; `min ms`: the fastest round (less sensitive to other load on the machine).",
             "nn.Conv2d computes the linear op at the same shape: the floor for ops that lower to it."]
    if meta.get("memory_note"):
        lines.append(meta["memory_note"])
    if cuda and not meta["backward"]:
        lines.append(f"roofline: taps / time / {meta['roofline_taps_per_s']:.3g} taps/s "
                     "(2 CUDA-core instructions per tap; see docs/guide.md).")
    head = ["op", "shape", "method", "backend", "median ms", "min ms", "vs unfold", "vs lambdaconv", "peak MiB"]
    if cuda and not meta["backward"]:
        head.append("roofline")
    head.append("note")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "|".join("---:" if h in ("median ms", "min ms", "vs unfold",
              "vs lambdaconv", "peak MiB", "roofline") else "---" for h in head) + "|"]
    for r in rows:
        cells = [f"`{r['op']}` ({r['reduce']})", r["shape"], r["method"], r.get("backend", ""), _fmt_ms(r.get("ms")),
                 _fmt_ms(r.get("min_ms")),
                 _fmt_x(r.get("vs_unfold")), _fmt_x(r.get("vs_lambdaconv")),
                 "" if r.get("peak_mib") is None else f"{r['peak_mib']:.1f}"]
        if cuda and not meta["backward"]:
            cells.append("" if r.get("roofline") is None else f"{100 * r['roofline']:.1f}%")
        note = r.get("error") or r.get("note", "")
        if r.get("rel_err") is not None and r["rel_err"] > meta["check_tol"]:
            note = (note + "; " if note else "") + f"MISMATCH: rel err {r['rel_err']:.2g} vs {r['checked_against']}"
        cells.append(note.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(res: dict, path: str) -> None:
    def clean(v):  # JSON has no inf / nan
        return None if isinstance(v, float) and not math.isfinite(v) else v
    rows = [{k: clean(v) for k, v in r.items()} for r in res["rows"]]
    with open(path, "w") as fh:
        json.dump({"meta": res["meta"], "rows": rows}, fh, indent=1)
        fh.write("\n")


_COLORS = {"lambdaconv": "#d62728", "nn.Conv2d": "#7f7f7f", "unfold": "#1f77b4", "compile": "#2ca02c",
           "cdist": "#9467bd", "semiconv": "#8c564b"}


def plot(res: dict, path: str) -> bool:
    """One panel per (op, shape), a horizontal bar per method (log-scale ms). False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = {}
    for r in res["rows"]:
        groups.setdefault((r["op"], r["reduce"], r["shape"]), []).append(r)
    heights = [0.5 + 0.32 * len(g) for g in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, sum(heights) + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    times = [r["ms"] for r in res["rows"] if r.get("ms")]
    lo, hi = (min(times) / 2, max(times) * 3) if times else (0.1, 10)
    for ax, ((op, red, shape), rs) in zip(axes[:, 0], groups.items()):
        labels = [r["method"] + (f" ({r['backend']})" if r["method"] == "lambdaconv" else "") for r in rs]
        vals = [r.get("ms") or 0 for r in rs]
        colors = [_COLORS.get(r["method"].split("[")[0], "#ff7f0e") for r in rs]
        y = range(len(rs))
        ax.barh(y, vals, color=colors, height=0.7)
        mins = [(r["min_ms"], i) for i, r in enumerate(rs) if r.get("min_ms")]
        if mins:  # the fastest round: how far other load on the machine pushed the median
            ax.plot(*zip(*mins), "k|", markersize=9)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{op} ({red}), {shape}", fontsize=9, loc="left")
        for i, r in enumerate(rs):
            text = f" {_fmt_ms(r['ms'])} ms" if r.get("ms") else f" {(r.get('error') or '')[:60]}"
            ax.text(r.get("ms") or lo, i, text, va="center", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    meta = res["meta"]
    what = "fwd+bwd" if meta["backward"] else "fwd"
    axes[-1, 0].set_xlabel(f"median ms (bars), fastest round (|), {what}, {meta['dtype']} (log scale)", fontsize=8)
    threads = f", {meta['threads']} thread{'s' if meta['threads'] > 1 else ''}" if meta["device"] == "cpu" else ""
    fig.suptitle(f"lambdaconv.bench on {meta['device_name']}{threads}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
