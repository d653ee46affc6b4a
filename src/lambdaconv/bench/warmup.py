"""`python -m lambdaconv.bench warmup`: the wall time of a layer's first call in a new process,
with its compile caches empty and then warm.

For each op and shape: a new Python process with fresh, empty caches (lambdaconv's, Triton's,
Inductor's) imports lambdaconv and torch, then times its first forward + backward call (every
compile and tuning it triggers) and a second call; then another new process with the same caches,
now warm, does the same. Rows: "first call, empty cache", "first call, new process, warm cache",
and the import time of each process in the note.

    python -m lambdaconv.bench warmup --device cpu --ops adder,dilation --shapes N8C32O32H32k3
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from . import cases, study

DEFAULT_OPS = "adder,dilation,tanh(A*x+B),exp(-(x-W)**2)"


def _child(argv) -> None:
    """`--child OP SHAPE DEVICE SPAWNED`: time the first and second fwd+bwd calls; JSON. SPAWNED:
    time.time() when the parent started this process (start-up and imports are the time until now)."""
    import torch

    import lambdaconv as lc
    from . import methods, timing
    op, shape_text, dev, spawned = argv
    imported = time.time() - float(spawned)
    device = torch.device(dev)
    (case,), shape = cases.parse_ops(op), cases.parse_shape(shape_text)
    x, ws = methods.make_inputs(case, shape, device, torch.float32)
    x.requires_grad_(True)
    for w in ws.values():
        w.requires_grad_(True)

    def call():
        y = lc.conv2d(x, case.op, ws, stride=shape.s, padding=shape.p, dilation=shape.d, groups=shape.g,
                      reduce=case.reduce)
        torch.autograd.grad(y, [x, *ws.values()], torch.ones_like(y))
        timing._sync(device)
    out = {"import_s": imported}
    for key in ("first_s", "second_s"):
        t0 = time.perf_counter()
        call()
        out[key] = time.perf_counter() - t0
    print(json.dumps(out))


def main(argv=None) -> list:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    p = study.parser("warmup", __doc__)
    p.add_argument("--ops", default=DEFAULT_OPS, help=f"comma list of presets or op strings[:reduce] (default {DEFAULT_OPS!r})")
    p.add_argument("--shapes", default="N8C32O32H32k3", help="comma list like N8C32O32H32k3")
    p.add_argument("--timeout", type=float, default=600, help="seconds for each process")
    args = p.parse_args(argv)
    device = study.setup(args)
    try:
        ops, shapes = cases.parse_ops(args.ops), cases.parse_shapes(args.shapes)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    rows = []
    for case in ops:
        for shape in shapes:
            with tempfile.TemporaryDirectory(prefix="lambdaconv-warmup-") as tmp:
                env = study.cache_environ(tmp)
                if args.threads:
                    env["OMP_NUM_THREADS"] = str(args.threads)
                for mode in ("first call, empty cache", "first call, new process, warm cache"):
                    r = subprocess.run([sys.executable, "-m", "lambdaconv.bench.warmup", "--child", case.label,
                                        str(shape), str(device), repr(time.time())], env=env, capture_output=True, text=True,
                                       timeout=args.timeout)
                    row = {"op": f"{case.label} ({case.reduce})", "shape": str(shape), "mode": mode,
                           "method": "lambdaconv", "dtype": "float32"}
                    if r.returncode:
                        row["note"] = "error: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]
                    else:
                        got = json.loads(r.stdout.strip().splitlines()[-1])
                        row["ms"] = got["first_s"] * 1e3
                        row["note"] = (f"fwd+bwd; process start and imports {got['import_s']:.1f} s before it; "
                                       f"second call {got['second_s'] * 1e3:.0f} ms")
                    rows.append(row)
    return study.finish("warmup", rows, args, device)


if __name__ == "__main__":
    main()
