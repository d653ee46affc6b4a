"""The reductions: one record each, read by every part of lambdaconv that reduces taps.

A `Reduction` says what a window of taps reduces to (its identity and torch reference), how the
gradient flows back to the taps (its backward kind), what the forward must save for that, whether
the GPU backward is deterministic, and its code in each kernel dialect. The float64 reference, the
tiled path, decompose, the planner, the generated kernels and the benchmarks all read the record:
adding a reduction is one `register(Reduction(...))` here (docs/how_it_works.md), and the tests
parametrize over `names()`, so they pick it up by themselves.

Backward kinds (the weight each tap's partial derivatives get, times the upstream gradient):
  uniform  1                       (sum)
  count    1 / number of taps      (mean; valid taps only under padding_mode="ignore")
  softmax  exp(tap - y)            (logsumexp; y before bias, saved by the forward)
  select   1 at the selected tap   (max / min; the winner's index saved by the forward)
A new reduction picks one of these; the backward code of every backend is written per kind.

Kernel dialects (code is optional per dialect: a reduction without a dialect's code runs on the
other backends, which "auto" falls back to):
  triton        the portable triton.language forward (templates.FORWARD): `TritonCode`
  gluon         the Gluon register-tile forward (gluon.py): `GluonCode`
  gluon_staged  the Gluon shared-memory-staged forward (gluon_staged.py): `StagedCode`
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import torch

BACKWARD_KINDS = ("uniform", "count", "softmax", "select")


class TritonCode(NamedTuple):
    """Hooks of the portable forward: accumulator init, per-tap combine of `v` (fp32 or the compute
    type CT), finish into `res`, the name SAVE_AUX stores, and the identity as a literal (a padded
    tap under "ignore" holds it)."""
    init: str
    combine: str
    finish: str
    aux: str
    identity: str


class GluonCode(NamedTuple):
    """Hooks of the Gluon register forward: init, per-step combine of v ([BLOCK_M, BLOCK_K, BLOCK_N]),
    finish into res (fp32). $STEP_ID in combine is the step's index (winners)."""
    init: str
    combine: str
    finish: str


class StagedCode(NamedTuple):
    """Hooks of the staged Gluon forward: init, per-k combine of v ([KS, BLOCK_M, BLOCK_N]), end of a
    K step, finish into res (fp32)."""
    init: str
    combine: str
    step_end: str
    finish: str


@dataclass(frozen=True)
class Reduction:
    name: str
    identity: float  # the value of a window with no tap (mean: 0, then 0 / 0 = NaN)
    # reference(t, dim, count) -> the reduction of t over dim; count: taps per output (for "count")
    reference: Callable
    backward: str  # one of BACKWARD_KINDS
    # the reduction R' with R(-v) = -R'(v), if any: kernels move a negation at the op's root out
    # of the loop (sum(-e) = -sum(e), max(-e) = -min(e), exact in IEEE arithmetic)
    negated: Optional[str] = None
    deterministic_gpu: bool = True  # the triton backward writes disjoint outputs (no atomics)
    select: Optional[Callable] = None  # select kind: torch.max / torch.min (values and indices)
    code: dict = field(default_factory=dict)  # dialect -> TritonCode / GluonCode / StagedCode
    doc: str = ""

    def __post_init__(self):
        if self.backward not in BACKWARD_KINDS:
            raise ValueError(f"reduction {self.name!r}: backward must be one of {BACKWARD_KINDS}")
        if (self.backward == "select") != (self.select is not None):
            raise ValueError(f"reduction {self.name!r}: a select reduction names its torch.max / torch.min")

    @property
    def linear(self) -> bool:
        """A linear function of the taps (sum, mean): a separable op then is a native convolution,
        and the gradient does not depend on the taps' values."""
        return self.backward in ("uniform", "count")

    @property
    def saves(self) -> Optional[str]:
        """What the forward saves for the backward: "winner" (the selected tap's index), "value"
        (y before bias) or None."""
        return {"select": "winner", "softmax": "value"}.get(self.backward)


_REGISTRY: dict = {}


def register(r: Reduction) -> Reduction:
    _REGISTRY[r.name] = r
    return r


def get(name: str) -> Reduction:
    return _REGISTRY[name]


def names() -> tuple:
    return tuple(_REGISTRY)


def all_records() -> tuple:
    return tuple(_REGISTRY.values())


# ---- dialect code shared by sum and mean, and by max and min --------------------------------------

_T_SUM_INIT = "    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)"
_G_SUM = ("    acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, LC)", "acc += gl.sum(v.to(gl.float32), axis=1)")
_S_SUM = ("    acc = gl.zeros([KS, BLOCK_M, BLOCK_N], gl.float32, LA)", "acc += v.to(gl.float32)", "")


def _triton_select(op: str, cmp: str, inf: str, comment: str = "") -> TritonCode:
    # max/min keep the winning tap only when a backward will need it (SAVE_AUX): a plain max is one
    # instruction per tap, the tracked one four
    return TritonCode(
        f"    acc = tl.full([BLOCK_M, BLOCK_N], float('{inf}'), CT)\n"
        "    idx = tl.full([BLOCK_M, BLOCK_N], -1, tl.int32)",
        f"""\
            if SAVE_AUX:
{comment}                better = (v {cmp} acc) | ((v != v) & (acc == acc)) | ((idx < 0) & (okf[:, None] != 0.0))
                acc = tl.where(better, v, acc)
                idx = tl.where(better, c * T + t, idx)
            else:
                acc = tl.{op}(acc, v, propagate_nan=tl.PropagateNan.ALL)""",
        "    res = acc", "idx", f"float('{inf}')")


def _gluon_select(op: str, cmp: str, inf: str) -> GluonCode:
    return GluonCode(
        f"    acc = gl.full([BLOCK_M, BLOCK_N], float('{inf}'), CT, LC)\n"
        "    win = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, LC)",
        "if SAVE_AUX:\n"
        f"    m_s = gl.reduce(v, 1, _{op}_nan)\n"
        f"    better = (m_s {cmp} acc) | ((m_s != m_s) & (acc == acc))\n"
        "    acc = gl.where(better, m_s, acc)\n"
        "    win = gl.where(better, $STEP_ID, win)\n"
        "else:\n"
        f"    acc = _{op}_nan(acc, gl.reduce(v, 1, _{op}_nan))", "    res = acc.to(gl.float32)")


def _staged_select(op: str, inf: str) -> StagedCode:
    return StagedCode(f"    acc = gl.full([KS, BLOCK_M, BLOCK_N], float('{inf}'), CT, LA)", f"acc = _{op}_nan(acc, v)", "",
                      f"    res = gl.reduce(acc, 0, _{op}_nan).to(gl.float32)")


# ---- the records ------------------------------------------------------------------------------------

register(Reduction(
    "sum", 0.0, lambda t, dim, count: t.sum(dim), "uniform", negated="sum",
    code={"triton": TritonCode(_T_SUM_INIT, "            acc += v", "    res = acc", "res", "0.0"),
          "gluon": GluonCode(*_G_SUM, "    res = acc"),
          "gluon_staged": StagedCode(*_S_SUM, "    res = gl.sum(acc, axis=0)")},
    doc="sum of the taps"))

register(Reduction(
    "mean", 0.0, lambda t, dim, count: t.sum(dim) / count.to(t.dtype), "count", negated="mean",
    code={"triton": TritonCode(_T_SUM_INIT, "            acc += v",
                               "    if IGNORE:\n        res = acc / (cnt * CG)[:, None]\n    else:\n"
                               "        res = acc / (CG * T)", "res", "0.0"),
          # the Gluon kernels never run "ignore" padding (function._gluon_forward): CG * T taps
          "gluon": GluonCode(*_G_SUM, "    res = acc / (CG * T)"),
          "gluon_staged": StagedCode(*_S_SUM, "    res = gl.sum(acc, axis=0) / (CG * T)")},
    doc="sum / number of taps (valid taps under padding_mode='ignore')"))

register(Reduction(
    "max", float("-inf"), lambda t, dim, count: t.max(dim).values, "select", negated="min",
    deterministic_gpu=False, select=torch.max,  # the triton backward adds winners' gradients with atomics
    code={"triton": _triton_select("maximum", ">", "-inf", "                # strictly greater keeps the first "
                                   "winner; NaN wins once and stays (torch.max)\n"),
          "gluon": _gluon_select("max", ">", "-inf"),
          "gluon_staged": _staged_select("max", "-inf")},
    doc="largest tap; the gradient goes to the first largest (NaN propagates)"))

register(Reduction(
    "min", float("inf"), lambda t, dim, count: t.min(dim).values, "select", negated="max",
    deterministic_gpu=False, select=torch.min,
    code={"triton": _triton_select("minimum", "<", "inf"),
          "gluon": _gluon_select("min", "<", "inf"),
          "gluon_staged": _staged_select("min", "inf")},
    doc="smallest tap; the gradient goes to the first smallest (NaN propagates)"))

register(Reduction(
    "logsumexp", float("-inf"), lambda t, dim, count: torch.logsumexp(t, dim), "softmax",
    # online logsumexp, one exp per tap: s is the sum of exp(tap - mx) for the running max mx
    code={"triton": TritonCode(
        "    mx = tl.full([BLOCK_M, BLOCK_N], float('-inf'), tl.float32)\n"
        "    s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)",
        """\
            up = v > mx
            lo = tl.where(up, mx, v)
            hi = tl.where(up, v, mx)
            e = tl.where(v == mx, 1.0, tl.exp(lo - hi))  # equal infinities: exp(nan) otherwise
            s = tl.where(up, s * e + 1.0, s + e)
            mx = hi""",
        "    res = mx + tl.log(s)", "res", "float('-inf')")},
    doc="log of the sum of exp of the taps (a smooth max); softmax-weighted gradients"))
