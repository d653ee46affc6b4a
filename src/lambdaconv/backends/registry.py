"""Backend registry. Rule (Liger-Kernel style): backend="auto" takes the first backend, in
priority order, that supports the call, quietly; a backend the user names must support the call
or the call raises a ValueError saying why."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..geometry import Geometry
from ..ir import OpSpec


@dataclass(frozen=True)
class Call:
    """Everything a backend needs to decide whether it can run a conv (plain data)."""
    spec: OpSpec
    reduce: str
    geometry: Geometry
    device: torch.device
    dtype: torch.dtype


@dataclass(frozen=True)
class Backend:
    """A backend and what it can do; the rest of lambdaconv reads these fields, never its name."""
    name: str
    # why this backend cannot run the call, or None if it can
    unsupported: Callable[[Call], Optional[str]]
    # (x, bias, weights: dict, call) -> y
    run: Callable
    priority: Optional[int]  # order under "auto"; None: only when named
    doc: str = ""
    # why the result of `call` depends on thread scheduling (atomics), or None. Under
    # torch.use_deterministic_algorithms(True) such calls are unsupported here, so "auto" moves on
    # (to "tiled": no atomics on CPU, torch's deterministic index_add on CUDA) and naming it raises.
    nondeterministic: Optional[Callable[[Call], Optional[str]]] = None
    # run() is plain torch ops (no custom kernels or autograd Functions): torch.func transforms run
    # it as it is; every other backend runs the composite definition under a transform.
    pure: bool = False
    # pure, and handles autocast itself (as nn.ConvNd): torch.compile / export trace it inline into
    # aten ops; every other backend goes through the custom op lambdaconv::direct_conv.
    traceable: bool = False
    # (call, x, bias, weights) -> runner(x, bias, weights) specialized to these tensors' dtypes and
    # shapes (functional.convnd caches it under a key that holds them; it reads weights by name, so
    # the cache passes the user's dict as given). None: run(x, bias, weights, call) per call.
    runner_for: Optional[Callable] = None
    # (call) -> lines saying what runs (kernels, configs, tiles): explain(..., input=, weights=)
    describe: Optional[Callable[[Call], tuple]] = None
    # (call) -> why "auto" passes over this backend although it can run the call (a compiled backend
    # on a call too small for its compile to pay back), or None. Naming the backend still runs it.
    passes_over: Optional[Callable[[Call], Optional[str]]] = None


_BACKENDS: dict = {}


def unsupported(b: "Backend", call: Call) -> Optional[str]:
    """Why `b` cannot run `call` (its own reason, or determinism), or None."""
    why = b.unsupported(call)
    if why is None and b.nondeterministic is not None and torch.are_deterministic_algorithms_enabled():
        nd = b.nondeterministic(call)
        if nd:
            why = f"{nd}, and torch.use_deterministic_algorithms(True) is on"
    return why


def register(b: Backend) -> Backend:
    _BACKENDS[b.name] = b
    return b


def names() -> tuple:
    return ("auto",) + tuple(_BACKENDS)


def check_name(name) -> None:
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name != "auto" and name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(names())}")


def select(name: str, call: Call) -> Backend:
    check_name(name)
    if name != "auto":
        b = _BACKENDS[name]
        why = unsupported(b, call)
        if why:
            raise ValueError(f"backend {name!r} cannot run this convolution: {why}")
        return b
    ranked = sorted((b for b in _BACKENDS.values() if b.priority is not None), key=lambda b: b.priority)
    for b in ranked:
        if unsupported(b, call) is None and (b.passes_over is None or b.passes_over(call) is None):
            return b
    raise RuntimeError("no backend supports this convolution")  # tiled supports everything


def get(name: str) -> Backend:
    return _BACKENDS[name]
