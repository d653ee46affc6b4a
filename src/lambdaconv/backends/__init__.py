"""Execution backends. Each module registers itself; importing this package registers them all.

    reference  float64 definition (tests, debugging; never picked by "auto")
    tiled      direct path in torch ops, any device, bounded memory
    decompose  separable ops (reduce sum/mean) as one native convolution
    inductor   direct path on CPU, compiled by Inductor into fused loops
"""
from . import registry
from .registry import Backend, Call, register, select
from . import builtin  # noqa: F401  (registers reference and tiled)
from . import triton as _triton  # noqa: F401  (registers triton: generated kernels)
from . import decompose  # noqa: F401  (registers decompose)
from . import inductor  # noqa: F401  (registers inductor: the CPU direct path compiled by Inductor)

__all__ = ["Backend", "Call", "register", "select", "registry"]
