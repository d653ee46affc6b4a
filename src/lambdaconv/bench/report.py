"""Benchmark results: the results table every study appends to, the compare run's markdown report
and JSON, and its PNG bar chart (matplotlib, Agg backend).

The results table (DIR/results.md, `--out DIR`) is one markdown table; every run appends its rows,
each with the run's date, commit, device and versions, and never rewrites the rows already there.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time

import torch

TABLE = "results.md"
COLUMNS = ("date", "commit", "device", "torch", "triton", "study", "op", "shape", "mode", "method", "dtype",
           "ms", "vs", "ratio", "MiB", "note")
_PREAMBLE = """# lambdaconv benchmark results

One row per measurement, appended by `python -m lambdaconv.bench [STUDY] --out benchmarks/results`.
`ms`: median over interleaved rounds (a CUDA call includes its host time; mode "... GPU work" is
the calls replayed from a CUDA graph); `ratio`: ms / the ms of the `vs` row of the same run (< 1:
faster); `MiB`: peak memory of one call. `commit` ends in "-dirty" when the tree had changes.
docs/perf_notes.md reads these figures.

"""


def commit() -> str:
    """The checkout's commit (short hash, "-dirty" with uncommitted changes), or "unknown"."""
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True,
                           text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"CPU {platform.processor() or platform.machine()}, {n} thread{'s' if n > 1 else ''}"


def run_meta(device) -> dict:
    """The columns every row of one run shares."""
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = ""
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": commit(), "device": device_name(device),
            "torch": torch.__version__.split("+")[0], "triton": tv}


def _cell(key, v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if key == "ms":
        return f"{v:.4g}"
    if key == "ratio":
        return f"{v:.3g}"
    if key == "MiB":
        return f"{v:.1f}"
    return str(v).replace("|", "/").replace("\n", " ")


def table(rows: list, meta: dict, header: bool = True) -> str:
    """Rows (dicts with some of COLUMNS; meta fills the rest) as markdown table lines."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" if c in ("ms", "ratio", "MiB") else "---"
                                                            for c in COLUMNS) + "|"] if header else []
    for r in rows:
        out.append("| " + " | ".join(_cell(c, r.get(c, meta.get(c))) for c in COLUMNS) + " |")
    return "\n".join(out) + "\n"


def append(out_dir: str, rows: list, meta: dict) -> str:
    """Append rows to out_dir/results.md (made with its preamble and header when missing); its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, TABLE)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a") as fh:
        if new:
            fh.write(_PREAMBLE)
        fh.write(table(rows, meta, header=new))
    return path


def read_table(path: str) -> list:
    """The rows of a results table as dicts of strings (tests, scripts)."""
    rows = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("| ") and not line.startswith("| date |"):
                cells = [c.strip() for c in line.strip()[1:-1].split("|")]
                rows.append(dict(zip(COLUMNS, cells)))
    return rows


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
    gpu = res["meta"]["device"].startswith("cuda")
    for r in res["rows"]:
        if gpu and r["method"] == "lambdaconv[tiled]":  # a fallback "auto" never runs there (it stays in the table)
            continue
        groups.setdefault((r["op"], r["reduce"], r["shape"]), []).append(r)
    heights = [0.5 + 0.32 * len(g) for g in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, sum(heights) + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    times = [r["ms"] for rs in groups.values() for r in rs if r.get("ms")]
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
    threads = f", {meta['threads']} thread{'s' if meta['threads'] > 1 else ''}" \
        if meta["device"] == "cpu" and "thread" not in meta["device_name"] else ""
    fig.suptitle(f"lambdaconv.bench on {meta['device_name']}{threads}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
