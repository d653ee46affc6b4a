"""The performance model: what a direct conv must compute and move, and the floors that gives.

A direct conv evaluates the op at every tap: taps = N * O * positions * C/groups * kernel taps.
Per tap it issues the op's mixed operations (those that read both x and a weight; x-only and
weight-only terms are hoisted out of the tap loop) plus one to reduce. abs and neg fold into the
operands of the next instruction on NVIDIA GPUs and cost nothing; exp, log, sin, cos, sqrt and
division run on the special-function units (MUFU), 16 per SM and clock against 128 for the FMA
pipes. The floor is the larger of the arithmetic time at those rates and the time to move each
input and output once at memory bandwidth. The GPU constants are an H100 SXM's, measured on this
project's machines (docs/perf_notes.md): 32.8e12 fp32 CUDA-core instructions/s (65.7 TFLOPS of FMA
chains), an eighth of that in MUFU ops/s,
3.0e12 bytes/s of copy bandwidth. bench reports the roofline from the same constants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .ir import topo_order

CUDA_CORE_PER_S = 32.8e12  # fp32 instructions per second, all CUDA cores of an H100 SXM (measured FMA chains)
MUFU_PER_S = CUDA_CORE_PER_S / 8  # special-function units: 16 lanes per SM and clock
BYTES_PER_S = 3.0e12  # device-to-device copy bandwidth of an H100, read + write
FREE = {"neg", "abs"}  # operand modifiers
SPECIAL = {"exp", "expm1", "log", "log1p", "sin", "cos", "tan", "sqrt", "atan", "erf", "pow"}  # one MUFU op
# (CUDA-core, MUFU) ops of the ops that are more than one instruction: a / b = a * rcp(b);
# sigmoid(a) = rcp(1 + exp(-a)); tanh by exp and rcp; softplus = log(1 + exp(a))
COMPOSITE = {"div": (1, 1), "sigmoid": (2, 2), "tanh": (3, 2), "softplus": (2, 2)}


@dataclass(frozen=True)
class Cost:
    taps: int
    alu_per_tap: int  # CUDA-core instructions per tap, the reduction's included
    mufu_per_tap: int  # special-function ops per tap
    bytes: int  # each input and output read or written once
    alu_ms: float
    mufu_ms: float
    memory_ms: float

    @property
    def floor_ms(self) -> float:
        return max(self.alu_ms, self.mufu_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return max((self.alu_ms, "CUDA-core arithmetic"), (self.mufu_ms, "special functions"),
                   (self.memory_ms, "memory"))[1]

    def lines(self) -> tuple:
        return (f"cost:      {self.taps:.3g} taps x ({self.alu_per_tap} CUDA-core + {self.mufu_per_tap} special-function "
                f"ops) and {self.bytes / 1e6:.3g} MB moved: forward >= {self.floor_ms:.3g} ms on an H100, bound by "
                f"{self.bound} (arithmetic {self.alu_ms:.3g} ms, special functions {self.mufu_ms:.3g} ms, memory "
                f"{self.memory_ms:.3g} ms)",)


def per_tap(expr) -> tuple:
    """(CUDA-core, special-function) operations per tap of an op: its mixed nodes (the reduction's
    combine not included)."""
    mixed = {}
    for n in topo_order(expr):
        if n.op in ("input", "weight"):
            mixed[n] = {n.op}
            continue
        mixed[n] = set().union(*(mixed[a] for a in n.args)) if n.args else set()
    alu = mufu = 0
    for n, kinds in mixed.items():
        if n.op in ("input", "weight", "const") or kinds != {"input", "weight"} or n.op in FREE:
            continue
        a, m = COMPOSITE.get(n.op, (0, 1) if n.op in SPECIAL else (1, 0))
        alu, mufu = alu + a, mufu + m
    return alu, mufu


def estimate(spec, geometry, itemsize: int, weight_elems: int) -> Cost:
    """The forward's floors for one call (geometry: a Geometry; weight_elems: elements of the weights as given)."""
    g = geometry
    return estimate_counts(spec, g.batch * g.out_channels * g.positions * g.cin_per_group * g.taps,
                           g.batch * g.in_channels * math.prod(g.in_size), g.batch * g.out_channels * g.positions,
                           itemsize, weight_elems)


def estimate_counts(spec, taps: int, in_elems: int, out_elems: int, itemsize: int, weight_elems: int) -> Cost:
    """The forward's floors from its counts: taps evaluated, elements of input, output and weights."""
    alu, mufu = per_tap(spec.expr)
    alu += 1  # the reduction's combine
    nbytes = itemsize * (in_elems + weight_elems + out_elems)
    return Cost(taps, alu, mufu, nbytes, taps * alu / CUDA_CORE_PER_S * 1e3, taps * mufu / MUFU_PER_S * 1e3,
                nbytes / BYTES_PER_S * 1e3)
