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
    name: str
    # why this backend cannot run the call, or None if it can
    unsupported: Callable[[Call], Optional[str]]
    # (x, bias, weights: dict, call) -> y
    run: Callable
    priority: Optional[int]  # order under "auto"; None: only when named
    doc: str = ""


_BACKENDS: dict = {}

# Backends whose result depends on thread scheduling for some calls: name -> (call -> why or None).
# Under torch.use_deterministic_algorithms(True) those calls are unsupported there, so "auto" moves
# on (to "tiled": no atomics on CPU, and torch's deterministic index_add on CUDA) and naming the
# backend raises. triton: the max/min backward adds winners' gradients with atomics
# (triton/templates.py, BACKWARD_SELECT); its other kernels write disjoint slabs.
NONDETERMINISTIC = {
    "triton": lambda call: "its max/min backward accumulates with atomic adds (order-dependent rounding)"
    if call.reduce in ("max", "min") else None,
}


def unsupported(b: "Backend", call: Call) -> Optional[str]:
    """Why `b` cannot run `call` (its own reason, or determinism), or None."""
    why = b.unsupported(call)
    if why is None and torch.are_deterministic_algorithms_enabled() and b.name in NONDETERMINISTIC:
        nd = NONDETERMINISTIC[b.name](call)
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
        if unsupported(b, call) is None:
            return b
    raise RuntimeError("no backend supports this convolution")  # tiled supports everything


def get(name: str) -> Backend:
    return _BACKENDS[name]
