"""One side of an A/B timing (`python -m lambdaconv.bench.ab`): run by path in a fresh process whose
PYTHONPATH puts one lambdaconv tree first, so it uses only the public API (lc.conv2d), torch and
triton, which every version of the library has. Prints one JSON object: case -> [ms of the call
(do_bench median), ms of the GPU work (CUDA-graph replay median) or None]."""
from __future__ import annotations

import json
import sys

import torch

import lambdaconv as lc

WEIGHTS = {"adder": ("weight",), "dilation": ("weight",), "sigmoid(A*x)*B": ("A", "B"), "x+W": ("W",)}


def _inputs(op, shape, dtype):
    n, c, o, h, k = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, c, h, h, device="cuda", generator=g).to(dtype).requires_grad_()
    ws = {w: (torch.randn(o, c, k, k, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
          for w in WEIGHTS[op]}
    return x, ws


def _graph_ms(fn, reps=20):
    """Median ms of one replay of fn captured in a CUDA graph (the GPU work without host time)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def main(cases):
    from triton.testing import do_bench
    out = {}
    for key in cases:
        op, reduce, shape, dtype, mode = key.split("|")
        shape = tuple(int(v) for v in shape.split(","))
        x, ws = _inputs(op, shape, getattr(torch, dtype))
        pad = shape[4] // 2
        if mode == "fwd":
            def fn():
                with torch.no_grad():
                    return lc.conv2d(x, op, ws, padding=pad, reduce=reduce or None)
        else:
            leaves = [x, *ws.values()]

            def fn():
                y = lc.conv2d(x, op, ws, padding=pad, reduce=reduce or None)
                return torch.autograd.grad(y, leaves, torch.ones_like(y))
        fn()
        torch.cuda.synchronize()
        call = do_bench(fn, warmup=25, rep=100, return_mode="median")
        try:
            graph = _graph_ms(fn)
        except Exception:  # a path that cannot be captured: the call time stands alone
            graph = None
        out[key] = [call, graph]
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
