"""Timing and peak memory of benchmark steps.

Timing: every method of one (op, shape) group is timed in the same rounds, one call each per
round in a rotating order, and the median over rounds is reported; so load from other processes
(2 shared cores) and clock changes hit every method alike. A call under ~1 ms is repeated inside
its round (the count is fixed after warm-up) so that the timer's resolution does not matter. CUDA
rounds synchronize before and after: the time is what the caller waits, launches included.

Peak memory: on CUDA, max_memory_allocated during one step minus what was allocated before it.
On CPU, the growth of the peak resident set (VmHWM) during one step, after resetting the peak
through /proc/self/clear_refs (Linux). glibc keeps freed blocks of up to 32 MiB in its heap once
it has seen one freed (its dynamic mmap threshold), so a step could reuse memory an earlier step
freed and show no growth: CpuPeak fixes the threshold at 128 KiB, so that every tensor above
that is mapped on allocation and unmapped on free, and trims the heap (malloc_trim) before each
measurement, so that blocks freed before that are given back too. Mapping on every allocation
slows allocation, so CPU memory is measured after all timing is done.

GPU work: `gpu_work` times CUDA graphs of the calls, replayed with the same interleaved rounds: the
kernels' time without the host's (Python, launches), which differs between machines of one kind.

The roofline: ROOFLINE_TAPS_PER_S is what every study divides by (docs/perf_notes.md).
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import Callable, Optional

import torch

from .. import cost

# fp32 taps per second an H100 can do with 2 CUDA-core instructions per tap (the floor of adder
# and max-plus): the performance model's instruction rate (lambdaconv.cost: 65.7 TFLOPS of fp32 FMA
# chains measured on an H100 = 32.8e12 instructions/s), / 2. The one roofline constant of the
# benchmarks (--roofline changes it).
ROOFLINE_TAPS_PER_S = cost.CUDA_CORE_PER_S / 2

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def describe(err: BaseException) -> str:
    if isinstance(err, _OOM) or "out of memory" in str(err).lower():
        return "out of memory"
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:200]}"


def make_step(fn: Callable, x, weights: dict, gy, backward: bool) -> Callable:
    """One timed unit: the forward under no_grad (inference), or forward + the gradients of x and
    every weight (autograd.grad: nothing accumulates into .grad between calls)."""
    if backward:
        leaves = [x] + list(weights.values())

        def step():
            y = fn(x, weights)
            torch.autograd.grad(y, leaves, gy.to(y.dtype), allow_unused=True)
    else:
        def step():
            with torch.no_grad():
                fn(x, weights)
    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def interleaved(steps: dict, rounds: int, device, warmup: int = 2, min_call_s: float = 1e-3,
                tick: Optional[Callable] = None):
    """(median, min) seconds per call of each step, timed round-robin; ({name: (median, min)}, errors).

    A step that raises (out of memory, a compile failure, a peer's bug) gets an error instead of a
    time and leaves the rounds; the others go on."""
    errors, reps = {}, {}
    for name, step in steps.items():
        try:
            for _ in range(warmup):  # compiles, autotunes, fills caches
                step()
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            reps[name] = max(1, min(50, int(min_call_s / max(time.perf_counter() - t0, 1e-9))))
        except Exception as err:
            errors[name] = describe(err)
            _free(device)
        if tick:
            tick(0)
    live = [n for n in steps if n not in errors]
    times = {n: [] for n in live}
    for r in range(rounds):
        k = r % len(live) if live else 0
        for name in live[k:] + live[:k]:
            if name in errors:
                continue
            try:
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(reps[name]):
                    steps[name]()
                _sync(device)
                times[name].append((time.perf_counter() - t0) / reps[name])
            except Exception as err:
                errors[name] = describe(err)
                _free(device)
        if tick:
            tick(1)
    return {n: (statistics.median(v), min(v)) for n, v in times.items() if n not in errors and v}, errors


def cuda_peak_bytes(step: Callable, device) -> int:
    _sync(device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (glibc malloc.h)


def steady_malloc() -> bool:
    """Fix glibc's malloc thresholds for CPU timing: keep freed blocks up to 32 MiB (the most glibc
    allows) for reuse, and never give the heap back. By default glibc adapts both thresholds to
    what the process freed before, so a method's time depended on what ran earlier: measured, an
    unfold forward at N4C16O16H16k3 took 6,880 page faults and 12 ms per call on its own, and 1.7 ms
    once another method had raised the thresholds. Fixed, every method runs as in a warmed-up
    training loop (and as on CUDA, whose caching allocator keeps freed blocks); tensors over 32 MiB
    are still mapped fresh on each allocation, as glibc always does. False when not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


class CpuPeak:
    """Peak RSS growth of a step (see the module docstring). CpuPeak.why_not() says whether it works here."""

    @staticmethod
    def why_not() -> Optional[str]:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            _status("VmHWM:")
        except (OSError, StopIteration, ValueError) as err:
            return f"no /proc peak-RSS reset here ({type(err).__name__})"
        return None

    def __init__(self):
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.fixed = bool(self.libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
        except (OSError, AttributeError):
            self.libc, self.fixed = None, False  # not glibc: may miss memory reused from the heap

    def __call__(self, step: Callable) -> int:
        gc.collect()
        if self.libc is not None:
            self.libc.malloc_trim(0)
        base = _status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM := current RSS
        step()
        return _status("VmHWM:") - base


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key)) * 1024


def cuda_graph(fn: Callable, calls: int = 1, warmup: int = 3):
    """(graph, what the last captured call returned): `calls` calls of fn captured in one CUDA
    graph, after `warmup` calls on a side stream (compiles, tuner decisions and allocator pools
    happen there, not in the capture). Replaying the graph gives the GPU work of the calls without
    the host's time (GPU benchmarks), and refills the returned tensors (GPU tests)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    out = None
    with torch.cuda.graph(graph):
        for _ in range(calls):
            out = fn()
    return graph, out


def gpu_work(fns: dict, rounds: int, device, calls: int = 10, tick: Optional[Callable] = None):
    """As `interleaved`, for the GPU work of each fn alone: `calls` calls captured in a CUDA graph,
    the replays timed round-robin, the time divided by `calls`. A fn that cannot be captured gets an
    error. Capture happens here, so settings a fn depends on must be in force when this is called
    (sweeps capture each config under its own settings, then time all of them together)."""
    graphs, errors = {}, {}
    for name, fn in fns.items():
        try:
            graphs[name] = cuda_graph(fn, calls)[0]
        except Exception as err:
            errors[name] = "not capturable: " + describe(err)
            torch.cuda.synchronize(device)
    times, more = replay(graphs, rounds, device, calls, tick)
    return times, {**errors, **more}


def replay(graphs: dict, rounds: int, device, calls: int = 10, tick: Optional[Callable] = None):
    """(median, min) seconds per captured call of each CUDA graph, replays timed as `interleaved`."""
    times, errors = interleaved({n: g.replay for n, g in graphs.items()}, rounds, device, tick=tick)
    return {n: (med / calls, best / calls) for n, (med, best) in times.items()}, errors


def warm_gpu(device, seconds: float = 2.0) -> None:
    """Busy the GPU for a while before timing: the first rows are measured at idle clocks otherwise
    (an adder forward measured 0.330 ms first, 0.218 one row later)."""
    a = torch.randn(4096, 4096, device=device)
    t = time.time()
    while time.time() - t < seconds:
        for _ in range(20):
            a @ a
        _sync(device)
