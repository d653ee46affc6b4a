"""The kernel plan of a triton call: which generated kernel runs each pass, decided in one place.

`decide(...)` is a pure function of the call's key (op, reduce, geometry, dtypes, gradients needed,
device, interpreter) and of lambdaconv.settings; function.TritonConv caches it with the rest of its
per-key plan and executes it, and explain(..., input=..., weights=...) prints it (`describe`). The
forward's Gluon config is not part of it: the tuner times the candidates on the first call of a
shape bucket (gluon.forward), and `describe` lists them, or the winner once it is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ... import reductions, settings
from ...geometry import Geometry
from ...settings import interpreting

HALF = {torch.float16: "tl.float16"}  # input dtypes whose kernels may compute in half precision (half_exact)
_CAPABILITY: dict = {}


def gluon_wanted(device, interp=None) -> bool:
    """The Gluon kernels: CUDA sm_80 and newer, compiled (not interpreted), settings.gluon != "0".
    `interp`: interpreting(), where the caller has read it already."""
    if device.type != "cuda" or (interpreting() if interp is None else interp) or settings.get().gluon == "0":
        return False
    if device.index is None:  # the current device: may change between calls
        return torch.cuda.get_device_capability(device) >= (8, 0)
    cap = _CAPABILITY.get(device)
    if cap is None:
        cap = _CAPABILITY[device] = torch.cuda.get_device_capability(device)
    return cap >= (8, 0)


@dataclass(frozen=True)
class KernelPlan:
    compute: str  # the portable kernels' compute type (tl.float32; tl.float16 for exact half max/min)
    saves: Optional[str]  # what the forward saves for the backward: "winner", "value" (y) or None
    forward: str  # "gluon" (its configs tuned against the portable kernel) or "portable"
    gluon_compute: str  # the Gluon forward's compute type (packed fp16 sums where exact enough)
    grad_x: Optional[str]  # "gluon", "portable", "select" (one kernel for both gradients) or None
    grad_w: Optional[str]  # "gluon", "portable", "select" or None
    grad_w_portable: str  # the portable weight-gradient kernel: "outer" (_bwd_w) or "rows" (_bwd_w_rows)

    @property
    def save_aux(self) -> bool:
        return self.saves is not None

    def lines(self) -> tuple:
        """What runs, one line per pass (explain)."""
        fwd = {"gluon": f"Gluon forward ({self.gluon_compute}; configs gluon.CONFIGS tuned per shape bucket "
                        f"against the portable _fwd)", "portable": f"portable _fwd ({self.compute})"}[self.forward]
        saved = {"winner": ", saves the winning taps", "value": ", saves y before bias"}.get(self.saves, "")
        out = [f"forward:   {fwd}{saved}"]
        names = {"gluon": "Gluon {}", "select": "_bwd_select (winners' gradients, atomic adds)",
                 "portable": "portable {}"}
        if self.grad_x:
            out.append("grad x:    " + names[self.grad_x].format("_bwd_x_gluon" if self.grad_x == "gluon" else "_bwd_x"))
        if self.grad_w:
            pw = "_bwd_w" if self.grad_w_portable == "outer" else "_bwd_w_rows"
            out.append("grad w:    " + names[self.grad_w].format(
                f"_bwd_w_gluon (portable {pw} where it does not apply)" if self.grad_w == "gluon" else pw))
        return tuple(out)


def decide(spec, g: Geometry, reduce: str, need_x: bool, need_w: tuple, interp: bool, dtype, half_w: bool,
           device) -> KernelPlan:
    """The kernels of one call. half_w: every weight has the input's (half) dtype."""
    from . import gluon_bwd
    from .kernels import half_exact
    rec = reductions.get(reduce)
    grad = need_x or True in need_w
    compute = "tl.float32"
    # Inference only: rounding to half precision creates ties, and the winner of a tie among
    # rounded values need not be the true argmax that the gradient must go to.
    if not grad and half_w and dtype in HALF and half_exact(spec, reduce):
        compute = HALF[dtype]
    gl_ok = gluon_wanted(device, interp)
    forward = "gluon" if (gl_ok and "gluon" in rec.code and g.padding_mode != "ignore" and g.cin_per_group >= 2) \
        else "portable"
    gluon_compute = compute
    if forward == "gluon" and dtype == torch.float16 and half_w:
        from . import gluon
        if gluon.half_sum(spec, reduce):
            gluon_compute = "tl.float16"
    s = settings.get()
    outer = s.triton_gw == "outer" or (s.triton_gw != "rows" and not interp and g.cout_per_group * g.cin_per_group >= 256)
    gx = gw = None
    if rec.backward == "select":
        gx = "select" if need_x else None
        gw = "select" if True in need_w else None
    else:
        # Gluon backward kernels. settings.gluon_bwd: "auto" (default) the weight gradient of
        # one-weight ops (adder on an H100: 0.80 ms against the portable 1.25; 0.73 with the
        # predicated sign accumulation) and the input gradient where that accumulation applies
        # (|x - w|-type terms: 0.49 ms against the portable 0.575; with the selects it was 0.63),
        # "1" both kernels, "0" neither. Two-weight ops stay portable.
        mode = s.gluon_bwd
        # grad= overrides take the portable backward kernels: those are the ones tested with them
        # (under the interpreter); the Gluon ones are written around the exact partials' shapes
        base = rec.backward != "softmax" and g.padding_mode != "ignore" and gl_ok and not spec.grad
        if need_x:
            fast = base and (mode == "1" or (mode == "auto" and gluon_bwd.x_uses_sgn(spec)))
            gx = "gluon" if fast else "portable"
        if True in need_w:
            fast_w = base and (mode == "1" or (mode == "auto" and len(spec.weight_names) == 1))
            gw = "gluon" if fast_w and g.batch * g.positions else "portable"
    return KernelPlan(compute, rec.saves if grad else None, forward, gluon_compute, gx, gw,
                      "outer" if outer else "rows")
