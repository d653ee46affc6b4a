"""Launching a compiled Triton / Gluon kernel again without Triton's per-launch argument binding.

`fn[grid](*args, **kw)` binds and specializes every argument in Python on each launch (about 35
constexprs for a Gluon kernel here). On the H100 machine's host that was ~0.13 ms per launch under
cProfile, three launches per adder fwd+bwd whose kernels take 1.2 ms: the call was
host-bound. After a first launch through the normal path, which returns the CompiledKernel, a
launch with the same specialization (the constexprs and options, dtypes, 16-byte alignment of the
pointers, the properties of ints Triton specializes on, the current device) calls that kernel's
launcher directly, with the arguments in signature order, the launch metadata and the launch hooks
as JITFunction.run passes them. Only for the triton versions whose JITFunction.run was read for
this (3.6); settings.fast_launch=False (LAMBDACONV_FAST_LAUNCH=0) turns it off.
"""
from __future__ import annotations

import torch
import triton

from ... import settings

_VERSIONS = ("3.6.",)
_OK = triton.__version__.startswith(_VERSIONS)
if _OK:
    from triton import knobs as _knobs
_cache: dict = {}
# the current device and raw stream without building a torch.cuda.Stream object per launch (what
# inductor's generated code calls); the public calls where this torch lacks them (CPU-only builds)
_get_device = getattr(torch._C, "_cuda_getDevice", None) or (lambda: torch.cuda.current_device())
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or (
    lambda dev: torch.cuda.current_stream(dev).cuda_stream)


def _spec(a):
    """What Triton specializes a runtime argument on (a superset of it: a finer key only misses)."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, bool):
        return ("b", a)
    if isinstance(a, int):
        return ("i", a == 1, a % 16 == 0, -2 ** 31 <= a < 2 ** 31)
    if isinstance(a, float):
        return ("f",)
    return ("o", a)


def launch(fn, grid: tuple, args: tuple, kw: dict) -> None:
    """fn[grid](*args, **kw), through the cached launcher where it applies."""
    if not _OK or not settings.get().fast_launch:
        fn[grid](*args, **kw)
        return
    dev = _get_device()
    key = (fn, dev, tuple(map(_spec, args)), tuple(kw.items()))
    try:
        hit = _cache.get(key)
    except TypeError:  # an unhashable argument: the normal path
        fn[grid](*args, **kw)
        return
    if hit is None:
        ck = fn[grid](*args, **kw)
        names = fn.arg_names[len(args):]
        if ck is not None and not hasattr(ck, "result") and all(n in kw for n in names):
            _cache[key] = (ck, tuple(names))
        return
    ck, names = hit
    full = (*args, *(kw[n] for n in names))
    stream = _raw_stream(dev)
    g0, g1, g2 = (tuple(grid) + (1, 1))[:3]
    rt = _knobs.runtime  # the hooks as JITFunction.run passes them (profilers see these launches too)
    ck.run(g0, g1, g2, stream, ck.function, ck.packed_metadata, ck.launch_metadata(grid, stream, *full),
           rt.launch_enter_hook, rt.launch_exit_hook, *full)
