"""The implementations a benchmark row can time, each a function (x, weights) -> y.

    lambdaconv          lc.conv2d(..., backend="auto"); the row records which backend "auto" took
    lambdaconv[NAME]    each other registered backend that supports the call ("reference" excluded:
                        it is the float64 definition on full broadcast tensors, for tests only)
    nn.Conv2d           the native convolution at the same shape (what nn.Conv2d calls): the floor
                        for separable ops, which lower to one such call on #terms x C channels
    unfold              unfold + broadcast + reduce, eager: the way people write such ops today;
                        materializes an (N, O, C*k*k, H*W) tensor per node of the op
    compile             torch.compile of that same function (inductor fuses the broadcast)
    lambda              lc.conv2d with the op as a Python lambda, one function object reused
    lambda(inline)      the same lambda written inside the call: a new function object each call
                        (same code), as most functional calls are written; ops in LAMBDAS only
    cdist               torch.cdist(p=1) on the unfolded input: the L1 op -|x-W| (adder) only
    semiconv            pytorch-nd-semiconv (max-plus and log semifields), when it is installed
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import lambdaconv as lc
from .. import reductions
from ..backends import registry
from ..calls import prepare
from ..ir import evaluate
from .cases import OpCase, Shape

ALL = ("lambdaconv", "backends", "nn.Conv2d", "unfold", "compile", "cdist", "semiconv", "lambda")

# Python lambdas for the "lambda" rows, by the op's canonical string (what resolve_op prints)
LAMBDAS = {
    "A*(x - B)": lambda x, A, B: A * (x - B),
    "-abs(x - weight)": lambda x, weight: -torch.abs(x - weight),
    "sigmoid(A*x)*B": lambda x, A, B: torch.sigmoid(A * x) * B,
}



@dataclass
class Method:
    name: str
    fn: Optional[Callable]  # (x, weights) -> y; None when skipped
    weights: dict  # the weight tensors it takes (nn.Conv2d has its own)
    backend: str = ""  # lambdaconv rows: the backend that runs
    same_function: bool = True  # computes the op itself (its output is checked against the others)
    note: str = ""
    error: Optional[str] = None  # set when it cannot run here: a row with the reason, not timed
    extra: dict = field(default_factory=dict)


def make_inputs(case: OpCase, shape: Shape, device, dtype, seed: int = 0):
    """x (N, C, H, W) ~ N(0, 1) and each op weight (O, C/g, k, k) ~ N(0, 0.25)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape.n, shape.c, shape.h, shape.w, generator=g, device=device, dtype=dtype)
    full = (shape.o, shape.c // shape.g, shape.k, shape.k)
    ws = {n: torch.randn(full, generator=g, device=device, dtype=dtype) * 0.5 for n in case.spec.weight_names}
    return x, ws


def _geometry_args(shape: Shape) -> dict:
    return dict(stride=shape.s, padding=shape.p, dilation=shape.d, groups=shape.g)


def unfold_conv(case: OpCase, shape: Shape) -> Callable:
    """The op by unfold + broadcast + reduce, in plain torch ops (zero padding, as lambdaconv's
    padding_mode="zeros": a padded tap holds x = 0 and still goes through the op)."""
    rec = reductions.get(case.reduce)

    def red(t, dim):  # the reduction's torch definition, over every tap of the window
        return rec.reference(t, dim, torch.tensor(t.shape[dim]))
    expr, k, g = case.spec.expr, shape.k, shape.g

    def conv(x, ws):
        n = x.shape[0]
        cols = F.unfold(x, k, dilation=shape.d, padding=shape.p, stride=shape.s)  # (N, C*k*k, L)
        cols = cols.view(n, g, 1, cols.shape[1] // g, cols.shape[2])  # (N, G, 1, Cg*k*k, L)
        w = {name: t.reshape(1, g, t.shape[0] // g, -1, 1) for name, t in ws.items()}  # (1, G, Og, Cg*k*k, 1)
        taps = evaluate(expr, cols, w)  # (N, G, Og, Cg*k*k, L): the whole taps tensor
        return red(taps, 3).reshape(n, -1, *shape.out_hw)

    return conv


def unfold_bytes(shape: Shape, dtype) -> int:
    """Size of one broadcast intermediate of the unfold way (each op node makes one)."""
    return shape.taps * torch.empty((), dtype=dtype).element_size()


def _compile(fn: Callable) -> Callable:
    # fullgraph: a graph break would silently time a half-eager function under the "compile" name
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _cdist_adder(shape: Shape, wname: str) -> Callable:
    def conv(x, ws):
        n = x.shape[0]
        cols = F.unfold(x, shape.k, dilation=shape.d, padding=shape.p, stride=shape.s).transpose(1, 2)  # (N, L, CK)
        w = ws[wname].reshape(ws[wname].shape[0], -1)
        y = -torch.cdist(cols, w[None].expand(n, -1, -1), p=1)  # (N, L, O)
        return y.transpose(1, 2).reshape(n, -1, *shape.out_hw)
    return conv


def _semiconv(case: OpCase, shape: Shape, device) -> Optional[Method]:
    """pytorch-nd-semiconv for the ops it has: max-plus (tropical max) and log-sum-exp of x+W.
    None when the package is not installed or has no such op (no row: skipped silently)."""
    try:
        import pytorch_nd_semiconv as sc
    except ImportError:
        return None
    if case.is_op("x+W", "max"):
        sf = sc.SelectSemifield.tropical_max() if device.type == "cuda" else sc.BroadcastSemifield.tropical_max()
    elif case.is_op("x+W", "logsumexp"):
        sf = sc.BroadcastSemifield.log(1.0)
    else:
        return None
    wname = case.spec.weight_names[0]
    try:
        mod = sf.dynamic()
    except Exception as err:  # a peer failing to build is a result too
        return Method("semiconv", None, {}, error=f"{type(err).__name__}: {err}")

    def conv(x, ws):
        return mod(x, ws[wname], stride=shape.s, padding=shape.p, dilation=shape.d, groups=shape.g, kind="corr")

    # it pads with the semifield's zero (-inf): padding_mode="ignore", not "zeros", at the borders
    return Method("semiconv", conv, {}, same_function=False, note="pads with -inf (as padding_mode='ignore')")


def lambdaconv_methods(case: OpCase, shape: Shape, x, ws, with_backends: bool) -> list:
    geo = _geometry_args(shape)
    *_, call, _ = prepare(2, x, case.op, ws, None, geo["stride"], geo["padding"], geo["dilation"], geo["groups"],
                          case.reduce, "zeros", "auto")
    auto = registry.select("auto", call).name

    def conv(backend):
        return lambda x_, ws_: lc.conv2d(x_, case.op, ws_, reduce=case.reduce, backend=backend, **geo)

    out = [Method("lambdaconv", conv("auto"), ws, backend=auto)]
    if with_backends:
        for name in registry.names()[1:]:
            if name in ("reference", auto):  # auto's backend is the row above
                continue
            why = registry.get(name).unsupported(call)
            if why is None:
                out.append(Method(f"lambdaconv[{name}]", conv(name), ws, backend=name))
    return out


def methods_for(case: OpCase, shape: Shape, x, ws, wanted, device, dtype) -> list:
    """Every method in `wanted` (names from ALL) that applies to this op and shape."""
    out = []
    if "lambdaconv" in wanted or "backends" in wanted:
        ms = lambdaconv_methods(case, shape, x, ws, "backends" in wanted)
        out += ms if "lambdaconv" in wanted else ms[1:]
    if "nn.Conv2d" in wanted:
        g = torch.Generator(device=device).manual_seed(1)
        w = torch.randn(shape.o, shape.c // shape.g, shape.k, shape.k, generator=g, device=device, dtype=dtype)
        geo = _geometry_args(shape)
        out.append(Method("nn.Conv2d", lambda x_, ws_: F.conv2d(x_, ws_["weight"], None, **geo), {"weight": w},
                          same_function=False, note="the linear op x*W at this shape"))
    eager = unfold_conv(case, shape)
    if "unfold" in wanted:
        m = Method("unfold", eager, ws)
        need, avail = unfold_bytes(shape, dtype), _available_bytes(device)
        # Three intermediates at once is typical (op nodes, their saved inputs for backward). On CPU
        # running out of memory is not an exception but the OOM killer, so the row says why instead.
        if avail is not None and 3 * need > avail:
            m.fn, m.error = None, (f"skipped: each broadcast intermediate is {need / 2 ** 30:.1f} GiB "
                                   f"and {avail / 2 ** 30:.1f} GiB are available")
        out.append(m)
    if "compile" in wanted:
        out.append(Method("compile", _compile(eager), ws, note="torch.compile(unfold), fullgraph"))
    if "cdist" in wanted and shape.g == 1 and case.is_op("-abs(x-W)", "sum"):
        out.append(Method("cdist", _cdist_adder(shape, case.spec.weight_names[0]), ws))
    fn = LAMBDAS.get(str(case.spec.expr))
    if "lambda" in wanted and fn is not None:
        geo = _geometry_args(shape)
        out.append(Method("lambda", lambda x_, ws_: lc.conv2d(x_, fn, ws_, reduce=case.reduce, **geo), ws))

        def inline(x_, ws_):  # what `lc.conv2d(x, lambda x, A, B: ..., ...)` in a forward does
            f = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
            return lc.conv2d(x_, f, ws_, reduce=case.reduce, **geo)
        out.append(Method("lambda(inline)", inline, ws, note="a new function object per call"))
    if "semiconv" in wanted:
        m = _semiconv(case, shape, device)
        if m is not None:
            m.weights = ws
            out.append(m)
    return out


def _available_bytes(device) -> Optional[int]:
    if device.type != "cpu":
        return None  # CUDA raises OutOfMemoryError, which the runner catches
    try:
        with open("/proc/meminfo") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
        return kib * 1024
    except (OSError, StopIteration, ValueError):
        return None


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64 over the entries finite in both (NaN counts when only one has it)."""
    y, ref = y.detach().double(), ref.detach().double()
    if y.shape != ref.shape:
        return math.inf
    fin = torch.isfinite(y) & torch.isfinite(ref)
    if not torch.equal(torch.isnan(y), torch.isnan(ref)):
        return math.inf
    diff = (y - ref)[fin].norm().item()
    return diff / max(ref[fin].norm().item(), 1e-30)
