"""One CUDA-graph capture for the GPU benchmarks: the GPU work of a call without the host's time."""
from __future__ import annotations

import torch


def capture(fn, calls: int = 1) -> torch.cuda.CUDAGraph:
    """A graph of `calls` calls of fn, after three warm-up calls on a side stream (compiles, tuner
    decisions and allocator pools happen there, not in the capture)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph
