"""What the benchmark runs: ops (--ops) and shapes (--shapes), parsed from compact strings.

Shapes are letter-number pairs, in any order, no separators:

    N batch   C in_channels   O out_channels   H height   W width (default H)
    k kernel (square)   s stride (1)   p padding (default k//2 * d: "same" at stride 1)
    d dilation (1)   g groups (1)

    "N8C32O32H32k3"         8 images of 32x32 with 32 channels, 32 filters of 3x3, padding 1
    "N1C64O64H128W64k5g64"  depthwise 5x5 on a 128x64 image

Ops are preset names or op strings (input named x), optionally followed by ":REDUCE"; a list of
them is split on the commas that are outside parentheses, so "maximum(x,W):max,adder" is two ops.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..ir import OpSpec, resolve_op, resolve_reduce

_KEYS = "NCOHWkspdg"
_PAIR = re.compile(r"([A-Za-z])(\d+)")


@dataclass(frozen=True)
class Shape:
    n: int
    c: int
    o: int
    h: int
    w: int
    k: int
    s: int = 1
    p: int = 0
    d: int = 1
    g: int = 1

    @property
    def out_hw(self) -> tuple:
        span = self.d * (self.k - 1) + 1
        return tuple((v + 2 * self.p - span) // self.s + 1 for v in (self.h, self.w))

    @property
    def taps(self) -> int:
        """(output, input-channel, kernel-offset) terms of one forward: the work a direct path does."""
        oh, ow = self.out_hw
        return self.n * self.o * oh * ow * (self.c // self.g) * self.k * self.k

    def __str__(self) -> str:
        s = f"N{self.n}C{self.c}O{self.o}H{self.h}"
        s += f"W{self.w}" if self.w != self.h else ""
        s += f"k{self.k}"
        for key, v, default in (("s", self.s, 1), ("p", self.p, self.k // 2 * self.d), ("d", self.d, 1),
                                ("g", self.g, 1)):
            s += f"{key}{v}" if v != default else ""
        return s


def parse_shape(text: str) -> Shape:
    t = text.strip()
    pairs = _PAIR.findall(t)
    if not pairs or "".join(a + b for a, b in pairs) != t:
        raise ValueError(f"bad shape {text!r}: expected letter-number pairs like 'N8C32O32H32k3'")
    v = {}
    for key, num in pairs:
        if key not in _KEYS:
            raise ValueError(f"bad shape {text!r}: unknown key {key!r} (keys: {', '.join(_KEYS)})")
        if key in v:
            raise ValueError(f"bad shape {text!r}: {key!r} given twice")
        v[key] = int(num)
    missing = [key for key in "NCOHk" if key not in v]
    if missing:
        raise ValueError(f"bad shape {text!r}: missing {', '.join(missing)} (N, C, O, H and k are required)")
    d = v.get("d", 1)
    shape = Shape(v["N"], v["C"], v["O"], v["H"], v.get("W", v["H"]), v["k"], v.get("s", 1),
                  v.get("p", v["k"] // 2 * d), d, v.get("g", 1))
    if min(shape.n, shape.c, shape.o, shape.h, shape.w, shape.k, shape.s, shape.d, shape.g) < 1:
        raise ValueError(f"bad shape {text!r}: sizes must be positive")
    if shape.c % shape.g or shape.o % shape.g:
        raise ValueError(f"bad shape {text!r}: groups {shape.g} must divide C and O")
    if min(shape.out_hw) < 1:
        raise ValueError(f"bad shape {text!r}: the kernel does not fit in the padded input")
    return shape


def parse_shapes(text: str) -> list:
    return [parse_shape(t) for t in text.split(",") if t.strip()]


@dataclass(frozen=True)
class OpCase:
    label: str  # as written on the command line
    op: str  # what lc.conv2d gets: a preset name or an op string
    reduce: str  # resolved (the preset's when not given)
    spec: OpSpec = field(compare=False, repr=False)

    def is_op(self, text: str, reduce: str) -> bool:
        """Whether this case computes `text` (its one weight named as ours) under `reduce`."""
        if reduce != self.reduce or len(self.spec.weight_names) != 1:
            return False
        w = self.spec.weight_names[0]
        return resolve_op(text.replace("W", w)).expr is self.spec.expr  # expressions are interned


def _split_top(text: str) -> list:
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [t.strip() for t in out + [cur] if t.strip()]


def parse_ops(text: str) -> list:
    cases = []
    for item in _split_top(text):
        op, _, red = item.partition(":")
        op = op.strip()
        try:
            spec = resolve_op(op)
            reduce = resolve_reduce(spec, red.strip() or None)
        except (ValueError, TypeError) as err:
            raise ValueError(f"bad op {item!r}: {err}") from None
        if not spec.weight_names:
            raise ValueError(f"bad op {item!r}: it has no weights")
        cases.append(OpCase(item, op, reduce, spec))
    return cases


# Defaults. The CPU shape is the one issue 2's CPU bars use; the CUDA shapes are the anchors' (both
# 1.85e9 taps: many pixels and few channels, and the reverse). Ops: two separable (they lower to
# one native conv), two direct ones with cheap taps (the roofline's 2-instruction case), and one
# direct op with transcendental taps.
DEFAULT_OPS = "offset,quadratic,adder,dilation,sigmoid(A*x)*B"
QUICK_OPS = "offset,adder,dilation"
DEFAULT_SHAPES = {"cpu": "N8C32O32H32k3", "cuda": "N16C64O64H56k3,N16C256O256H14k3"}
QUICK_SHAPES = {"cpu": "N4C32O32H32k3", "cuda": "N16C64O64H56k3"}
