"""Print an op's expression DAG as straight-line triton.language code (inductor TritonOverrides style).

One table row per IR op: a format string over its argument names. Every DAG node becomes one
local variable, so common subexpressions (and the nodes that the symbolic partials share with the
forward expression) are computed once. Operands keep their broadcast shapes: a term that depends
only on the input is computed on the [BLOCK_M, 1] column, one that depends only on weights on the
[1, BLOCK_N] row, and only the mixed terms per tap.

Only core triton.language functions are used (no libdevice): the same source then runs compiled
on a GPU and under TRITON_INTERPRET=1 on CPU tensors, where extern calls are not supported.
The few functions without a core instruction (expm1, log1p, tanh, atan) are helpers in PRELUDE,
accurate to a few float32 ulps; the backend computes in float32 only (float64 goes to "tiled").
"""
from __future__ import annotations

import math
from string import Template

from ...ir.expr import Expr, topo_order

def indent(text: str, n: int) -> str:
    """text with every non-empty line indented by n spaces (generated code spliced into templates)."""
    return "\n".join(" " * n + line if line else line for line in text.splitlines())


# The one template mechanism of every kernel (forward and backward, each dialect): a kernel's text
# is a string.Template whose named hooks ($W_ARGS, $W_LOADS, $OP_CODE, $INIT, $COMBINE, $FINISH,
# $MAIN_LOOP, ...) are filled with generated code; per-weight lines come from one line format.
def fill(template: str, **hooks) -> str:
    """template with every $HOOK replaced (a missing hook is a KeyError: templates and code agree)."""
    return Template(template).substitute(**hooks)


def lines(fmt: str, names, n: int = 0, **kw) -> str:
    """fmt formatted once per weight (i: its index, name: its name), joined, indented by n."""
    text = "\n".join(fmt.format(i=i, name=name, **kw) for i, name in enumerate(names))
    return indent(text, n) if n else text


_NAN_ALL = "propagate_nan=tl.PropagateNan.ALL"  # torch.maximum / relu propagate NaN (Gluon uses tl's enum)

# One format string per IR op over its argument names; {L} is the dialect's language module.
OPS_SRC = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "neg": "-{0}",
    "abs": "{L}.abs({0})",
    # torch.sign is (x > 0) - (x < 0): 0 for 0 and for NaN
    "sign": "{L}.where({0} > 0.0, 1.0, {L}.where({0} < 0.0, -1.0, 0.0))",
    "exp": "{L}.exp({0})",
    "expm1": "_expm1({0})",
    "log": "{L}.log({0})",
    "log1p": "_log1p({0})",
    "sqrt": "{L}.sqrt({0})",
    "sin": "{L}.sin({0})",
    "cos": "{L}.cos({0})",
    "tan": "{L}.sin({0}) / {L}.cos({0})",
    "atan": "_atan({0})",
    "tanh": "_tanh({0})",
    "sigmoid": "1.0 / (1.0 + {L}.exp(-{0}))",
    # torch's softplus: x above the threshold 20, else log1p(exp(x))
    "softplus": "{L}.where({0} > 20.0, {0}, _log1p({L}.exp({0})))",
    "relu": "{L}.maximum({0}, 0.0, " + _NAN_ALL + ")",
    "erf": "{L}.erf({0})",
    "maximum": "{L}.maximum({0}, {1}, " + _NAN_ALL + ")",
    "minimum": "{L}.minimum({0}, {1}, " + _NAN_ALL + ")",
    "where": "{L}.where({0}, {1}, {2})",
    "gt": "{0} > {1}",
    "ge": "{0} >= {1}",
    "lt": "{0} < {1}",
    "le": "{0} <= {1}",
    "eq": "{0} == {1}",
    "ne": "{0} != {1}",
    "pow": None,  # printed by _pow: constant exponents become multiplications or sqrt
}
# The PRELUDE helper an op's code calls (pow: only a tensor or large integer exponent)
OP_HELPERS = {"expm1": "_expm1", "log1p": "_log1p", "atan": "_atan", "tanh": "_tanh", "softplus": "_log1p"}

PRELUDE = '''
@triton.jit
def _expm1(x):
    # exp(x) - 1 loses all digits near 0: a Taylor polynomial there (error < 1e-10 for |x| < 0.03).
    small = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0))))
    return tl.where(tl.abs(x) < 0.03, small, tl.exp(x) - 1.0)


@triton.jit
def _log1p(x):
    small = x * (1.0 - x * (0.5 - x * (1.0 / 3.0 - x * (0.25 - x * 0.2))))
    return tl.where(tl.abs(x) < 0.03, small, tl.log(1.0 + x))


@triton.jit
def _tanh(x):
    a = tl.abs(x)
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)  # exp overflows to inf for large a: gives 1
    small = a * (1.0 - a * a * (1.0 / 3.0 - a * a * (2.0 / 15.0)))
    t = tl.where(a < 0.03, small, big)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def _atan(x):
    # |x| > 1 -> pi/2 - atan(1/|x|); three half-angle steps atan(r) = 2 atan(r / (1 + sqrt(1 + r^2)))
    # bring r under tan(pi/16) = 0.199, where the odd series to r^11 is within 1e-10.
    a = tl.abs(x)
    r = tl.where(a > 1.0, 1.0 / a, a)
    r = r / (1.0 + tl.sqrt(1.0 + r * r))
    r = r / (1.0 + tl.sqrt(1.0 + r * r))
    r = r / (1.0 + tl.sqrt(1.0 + r * r))
    r2 = r * r
    p = r * (1.0 - r2 * (1.0 / 3.0 - r2 * (0.2 - r2 * (1.0 / 7.0 - r2 * (1.0 / 9.0 - r2 * (1.0 / 11.0))))))
    p = 8.0 * p
    p = tl.where(a > 1.0, 1.5707963267948966 - p, p)
    return tl.where(x < 0.0, -p, p)


@triton.jit
def _pow(b, e):
    # torch.pow for a tensor exponent: a negative base gives a real result for integer exponents.
    mag = tl.exp(e * tl.log(tl.abs(b)))
    e_int = tl.floor(e) == e
    odd = e_int & (tl.floor(e * 0.5) * 2.0 != e)
    r = tl.where(b < 0.0, tl.where(e_int, tl.where(odd, -mag, mag), float("nan")), mag)
    return tl.where((e == 0.0) | (b == 1.0), 1.0, r)
'''


def literal(v: float) -> str:
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else '(-float("inf"))'
    return f"({v!r})" if v < 0 else repr(v)


def _pow(base: str, e: Expr, L: str = "tl") -> str:
    if not e.is_const:
        return None
    v = e.value
    if v == 0.5:
        return f"{L}.sqrt({base})"
    if v.is_integer() and 1 <= abs(v) <= 16:
        n, terms, sq = int(abs(v)), [], base
        while n:  # square-and-multiply: exact sign for negative bases, as torch.pow
            if n & 1:
                terms.append(sq)
            n >>= 1
            if n:
                sq = f"({sq} * {sq})"
        prod = " * ".join(terms)
        return prod if v > 0 else f"1.0 / ({prod})"
    if v.is_integer():
        return None  # large integer exponent: the general helper keeps the sign
    return f"{L}.exp({literal(v)} * {L}.log({base}))"  # NaN for negative bases, as torch


class Unprintable(Exception):
    """An op this dialect cannot print (its helper is not in the dialect's prelude)."""


class TritonPrinter:
    """Emits triton.language code for several expressions into one namespace (shared nodes printed
    once). `helpers` collects the PRELUDE functions the code calls; a dialect lists the ones its
    modules define (HELPERS), and printing an op whose helper is missing raises Unprintable."""
    LANG = "tl"
    HELPERS = frozenset({"_expm1", "_log1p", "_tanh", "_atan", "_pow"})  # codegen.PRELUDE

    def __init__(self, leaves: dict, prefix: str = "_v"):
        self.names = {}  # Expr -> variable name or literal
        self.lines = []
        self.leaves = leaves  # ("input", name) / ("weight", name) -> variable name
        self.prefix = prefix
        self.helpers = set()

    def _helper(self, name: str) -> None:
        if name not in self.HELPERS:
            raise Unprintable(f"{name} is not defined in {type(self).__name__}'s modules")
        self.helpers.add(name)

    def value(self, e: Expr) -> str:
        L = self.LANG
        for n in topo_order(e):
            if n in self.names:
                continue
            if n.op == "const":
                self.names[n] = literal(n.value)
                continue
            if n.op in ("input", "weight"):
                self.names[n] = self.leaves[(n.op, n.value)]
                continue
            args = [self.names[a] for a in n.args]
            src = None
            if n.op == "pow":
                src = _pow(args[0], n.args[1], L)
                if src is None:
                    self._helper("_pow")
                    src = f"_pow({args[0]}, {args[1]})" if not n.args[1].is_const else \
                        f"_pow({args[0]}, {args[0]} * 0.0 + {args[1]})"
            else:
                if n.op in OP_HELPERS:
                    self._helper(OP_HELPERS[n.op])
                src = OPS_SRC[n.op].format(*args, L=L)
            name = f"{self.prefix}{len(self.lines)}"
            self.lines.append(f"{name} = {src}")
            self.names[n] = name
        return self.names[e]

    def code(self, indent: int) -> str:
        pad = " " * indent
        return "\n".join(pad + line for line in self.lines) if self.lines else pad + "pass"


class GluonPrinter(TritonPrinter):
    """triton.experimental.gluon.language: the same ops under gl (NaN handling from tl's enum); the
    Gluon modules carry none of the PRELUDE helpers, so ops needing one are not printed."""
    LANG = "gl"
    HELPERS = frozenset()


Printer = TritonPrinter


def depends(e: Expr, kind: str) -> bool:
    return any(n.op == kind for n in topo_order(e))


def emit(exprs, x_var: str, weight_vars: dict, indent: int, prefix: str = "_v", printer=TritonPrinter):
    """(code, [result names]) computing each expr; results that are constants stay literals.
    Raises Unprintable where the printer's dialect lacks a helper an op needs."""
    p = printer({("input", "x"): x_var, **{("weight", k): v for k, v in weight_vars.items()}}, prefix)
    outs = [p.value(e) for e in exprs]
    return p.code(indent), outs


# Both Gluon forwards' output tile (gluon.py, gluon_staged.py): rows m and out channels n of this
# program in the accumulator's layout LC, their offsets into y (N, O, *out) and the bounds mask.
OUTPUT_TILE = """\
    offs_mc = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, LC))
    offs_nc = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, LC))
    nc = offs_mc // P
    pc = offs_mc % P
    y_off = gl.expand_dims(nc.to(gl.int64) * (O * P) + pc, 1) + gl.expand_dims((g * OG + offs_nc) * P, 0)
    mask = gl.expand_dims(offs_mc < n_rows, 1) & gl.expand_dims(offs_nc < OG, 0)"""
