"""`python -m lambdaconv.bench --model resnet18`: one training step of a whole network, every 3x3
convolution as nn.Conv2d and as each chosen op.

ResNet-18 for 32x32 inputs (batch 128, 10 classes, SGD with momentum): the stem and the 1x1
shortcuts stay nn.Conv2d, every 3x3 convolution of the residual blocks becomes
lc.Conv2d(..., op=OP). `--model small` is a two-stage ResNet of width 16 at 16x16, batch 16, for
`--device cpu`. Rows: the median step (forward, loss, backward, optimizer step) over interleaved
rounds, its ratio to nn.Conv2d's in the same mode and dtype, and the peak memory of one step;
eager and torch.compile (`--modes`), float32 and bfloat16 autocast (`--dtypes`). `--first-step`
adds, per op, the wall time of the first step in a new process whose kernel caches (lambdaconv's,
Triton's, Inductor's) are empty, and then in a second new process with those caches warm.

    python -m lambdaconv.bench --model resnet18 --ops offset,adder,dilation --out benchmarks/results
    python -m lambdaconv.bench --model small --device cpu --rounds 5
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import lambdaconv as lc
from ..ir import resolve_op
from . import cases, study, timing

BASE = "nn.Conv2d"
DEFAULT_OPS = "offset,quadratic,adder,dilation"
DTYPES = {"float32": None, "bf16": torch.bfloat16}
# name -> (width, blocks per stage, batch, input size, classes)
MODELS = {"resnet18": (64, (2, 2, 2, 2), 128, 32, 10), "small": (16, (1, 1), 16, 16, 10)}


class Block(nn.Module):
    """ResNet's basic block: two 3x3 convolutions made by conv3x3, a 1x1 nn.Conv2d shortcut when
    the shape changes."""

    def __init__(self, conv3x3, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1, self.b1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.c2, self.b2 = conv3x3(cout, cout, 1), nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


def resnet(conv3x3, width: int, blocks: tuple, classes: int) -> nn.Module:
    """A CIFAR-style ResNet (3x3 nn.Conv2d stem, stages doubling the width and halving the size)."""
    layers = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, n in enumerate(blocks):
        cout = width * 2 ** i
        for j in range(n):
            layers.append(Block(conv3x3, cin, cout, 2 if i and not j else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def conv_maker(case):
    """(cin, cout, stride) -> the 3x3 layer: nn.Conv2d for BASE, else lc.Conv2d with the case's op."""
    if case is None:
        return lambda cin, cout, s: nn.Conv2d(cin, cout, 3, s, 1, bias=False)
    return lambda cin, cout, s: lc.Conv2d(cin, cout, 3, s, 1, bias=False, op=case.op, reduce=case.reduce)


def build(name: str, case, device, seed: int = 0):
    """(model, optimizer, inputs, labels) of one network, the same initial stem and data for every op."""
    width, blocks, batch, hw, classes = MODELS[name]
    torch.manual_seed(seed)
    model = resnet(conv_maker(case), width, blocks, classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, hw, hw, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    return model, opt, x, y


def make_step(model, opt, x, y, device, amp_dtype):
    """One training step: forward (under autocast when amp_dtype), loss, backward, optimizer step."""
    def step():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def steps(name: str, labels: dict, modes: list, dtypes: list, device) -> dict:
    """(label, mode, dtype) -> step; labels maps a row label to its OpCase (None: nn.Conv2d)."""
    out = {}
    for label, case in labels.items():
        for mode in modes:
            for dt in dtypes:
                model, opt, x, y = build(name, case, device)
                run = torch.compile(model) if mode == "compile" else model
                out[(label, mode, dt)] = make_step(run, opt, x, y, device, DTYPES[dt])
    return out


# --- the first step in a new process -----------------------------------------------------------

def _child(argv) -> None:
    """`--child NAME OP REDUCE DEVICE`: build, time the first step (compiles included), print JSON."""
    name, op, reduce, dev = argv
    device = torch.device(dev)
    case = None if op == BASE else cases.OpCase(op, op, reduce, resolve_op(op))
    model, opt, x, y = build(name, case, device)
    step = make_step(model, opt, x, y, device, None)
    timing._sync(device)
    t0 = time.perf_counter()
    step()
    timing._sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    step()
    timing._sync(device)
    print(json.dumps({"first_s": first, "second_s": time.perf_counter() - t0}))


def first_steps(name: str, label: str, case, device, timeout: float) -> dict:
    """{"empty": s, "warm": s}: the first step of two new processes sharing fresh, empty caches."""
    op, reduce = (BASE, "sum") if case is None else (case.op, case.reduce)
    out = {}
    with tempfile.TemporaryDirectory(prefix="lambdaconv-first-step-") as tmp:
        env = study.cache_environ(tmp)
        for key in ("empty", "warm"):
            r = subprocess.run([sys.executable, "-m", "lambdaconv.bench.model", "--child", name, op, reduce,
                                str(device)], env=env, capture_output=True, text=True, timeout=timeout)
            if r.returncode != 0:
                out[key] = "error: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]
                continue
            out[key] = json.loads(r.stdout.strip().splitlines()[-1])["first_s"]
    return out


# --- the run -------------------------------------------------------------------------------------

def parser():
    p = study.parser("--model", __doc__)
    p.add_argument("--model", default="resnet18", choices=list(MODELS))
    p.add_argument("--ops", default=DEFAULT_OPS, help=f"comma list of presets or op strings[:reduce] (default {DEFAULT_OPS!r})")
    p.add_argument("--modes", default="eager", help="comma list of eager, compile (default eager)")
    p.add_argument("--dtypes", default="float32,bf16", help="comma list of float32, bf16 (autocast) (default both)")
    p.add_argument("--first-step", action="store_true", help="also the first step in new processes, caches empty / warm")
    p.add_argument("--timeout", type=float, default=600, help="seconds for each first-step process")
    p.add_argument("--no-memory", action="store_true", help="do not measure peak memory")
    p.add_argument("--plot", help="the PNG's path (default: DIR/model_<model>_<device>.png with --out)")
    return p


def _check_list(text: str, allowed, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"error: bad --{what} {text!r}: expected a comma list of {', '.join(allowed)}")
    return items


def main(argv=None) -> list:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    args = parser().parse_args(argv)
    device = study.setup(args)
    modes = _check_list(args.modes, ("eager", "compile"), "modes")
    dtypes = _check_list(args.dtypes, DTYPES, "dtypes")
    try:
        labels = {BASE: None, **{c.label: c for c in cases.parse_ops(args.ops)}}
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    args.rounds = args.rounds or (20 if device.type == "cuda" else 5)
    width, blocks, batch, hw, _ = MODELS[args.model]
    shape = f"N{batch} {hw}x{hw}"
    fns = steps(args.model, labels, modes, dtypes, device)
    by = {k: {"op": args.model, "shape": shape, "mode": f"train step, {k[1]}", "method": k[0],
              "dtype": "float32" if k[2] == "float32" else "bf16 autocast"} for k in fns}
    times, errors = timing.interleaved(fns, args.rounds, device, warmup=3)
    study.timed(by, times, errors)
    if not args.no_memory:
        measure = (lambda s: timing.cuda_peak_bytes(s, device)) if device.type == "cuda" else timing.CpuPeak()
        for k, fn in fns.items():
            if "note" not in by[k]:
                by[k]["MiB"] = measure(fn) / 2 ** 20
    rows = list(by.values())
    study.ratios(rows, BASE, key=lambda r: (r["mode"], r["dtype"]))
    if args.first_step:
        for label, case in labels.items():
            got = first_steps(args.model, label, case, device, args.timeout)
            for key, what in (("empty", "first step, empty cache"), ("warm", "first step, new process, warm cache")):
                v = got[key]
                rows.append({"op": args.model, "shape": shape, "mode": what, "method": label, "dtype": "float32",
                             **({"ms": v * 1e3} if isinstance(v, float) else {"note": v})})
    rows = study.finish("model", rows, args, device)
    plot = args.plot or (args.out and os.path.join(args.out, f"model_{args.model}_{device.type}.png"))
    if plot and _plot(rows, plot, args.model, device):
        print("wrote " + plot)
    return rows


def _plot(rows: list, path: str, name: str, device) -> bool:
    """Bars: each op's step time over nn.Conv2d's, one group per (mode, dtype)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from .report import device_name
    steps_ = [r for r in rows if r["mode"].startswith("train step") and r.get("ratio")]
    groups = sorted({(r["mode"], r["dtype"]) for r in steps_})
    methods = list(dict.fromkeys(r["method"] for r in steps_))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(methods) * max(1, len(groups)) / 2, 4))
    wid = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        vals = {r["method"]: r for r in steps_ if (r["mode"], r["dtype"]) == g}
        xs = [j + i * wid for j, m in enumerate(methods) if m in vals]
        ys = [vals[m]["ratio"] for m in methods if m in vals]
        bars = ax.bar(xs, ys, wid, label=f"{g[0].split(', ')[1]}, {g[1]}")
        for b, m in zip(bars, [m for m in methods if m in vals]):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{vals[m]['ms']:.3g}", ha="center",
                    va="bottom", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + wid * (len(groups) - 1) / 2 for j in range(len(methods))], methods, rotation=20)
    ax.set_ylabel("training step / nn.Conv2d's (labels: ms)")
    ax.set_title(f"{name} training step, {device_name(device)}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


if __name__ == "__main__":
    main()
