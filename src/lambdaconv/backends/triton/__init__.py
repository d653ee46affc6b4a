"""The "triton" backend: kernels generated from the op's IR, forward and backward.

    codegen.py    IR ops -> triton.language source (CSE through the DAG)
    templates.py  the portable kernels (implicit-GEMM forward, gather backward of x, split-reduce
                  backward of the weights, selected-tap backward of max/min)
    kernels.py    fills the templates, caches the source on disk (atomic writes), imports it
    tuning.py     tile configs per shape bucket
    function.py   the autograd Function (layouts, launches, gradient assembly)

Runs on CUDA devices, and on CPU tensors under TRITON_INTERPRET=1 (what CI tests). "auto" picks it
on CUDA for direct ops (priority 50: after the decompose backend, before "tiled").
"""
from __future__ import annotations

import importlib.util

import torch

from ... import reductions
from ..registry import Backend, Call, register

PRIORITY = 50


def available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _unsupported(call: Call):
    if not available():
        return "triton is not installed (pip install triton)"
    if "triton" not in reductions.get(call.reduce).code:
        return f"no triton code for reduce {call.reduce!r} (reductions.py)"
    if call.geometry.holes:
        return ("no holes in the triton kernels (a transposed convolution runs them per output phase: "
                "transpose_phases.py)")
    if call.dtype == torch.float64:
        return "the triton kernels compute in float32; float64 runs on 'tiled'"
    if call.device.type == "cpu":
        from ...settings import interpreting
        if not interpreting():
            return "CPU tensors run triton kernels only under TRITON_INTERPRET=1 (slow: for tests)"
        return None
    if call.device.type != "cuda":
        return f"no triton kernels for device {call.device.type!r}"
    return None


_apply = None  # TritonConv.apply, imported on the first call (the import needs triton)


def _run(x, bias, weights, call: Call):
    global _apply
    if _apply is None:
        from .function import TritonConv
        _apply = TritonConv.apply
    return _apply(x, bias, (call.spec, call.geometry, call.reduce, tuple(weights)), *weights.values())


def _nondeterministic(call: Call):
    if not reductions.get(call.reduce).deterministic_gpu:  # select: winners' gradients added with atomics
        return f"its {call.reduce} backward accumulates with atomic adds (order-dependent rounding)"
    return None


def _describe(call: Call) -> tuple:
    """The kernels of a training call (every input needing a gradient; kplan.decide)."""
    from ...settings import interpreting
    from . import kplan
    need_w = (True,) * len(call.spec.weight_names)
    kp = kplan.decide(call.spec, call.geometry, call.reduce, True, need_w, interpreting(), call.dtype, True,
                      call.device)
    return kp.lines() + ("           (training: every input needs a gradient; under no_grad the forward alone)",)


register(Backend("triton", _unsupported, _run, PRIORITY,
                 "direct: generated triton kernels, forward and backward (CUDA; CPU under TRITON_INTERPRET=1)",
                 nondeterministic=_nondeterministic, describe=_describe))
