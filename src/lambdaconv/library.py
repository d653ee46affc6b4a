"""lambdaconv in the PyTorch ecosystem: the route taken under torch.compile / torch.export, the
direct path as torch.library custom ops, and autocast.

Why a separate route: resolving an op (torch.fx tracing, ast parsing, sympy separability, all
behind caches) is Python that Dynamo cannot and should not trace. Under compile / export:

  compiled_conv  (traced by Dynamo)   resolves the op once at trace time through
                 torch.compiler.assume_constant_result into plain constants: its canonical string
                 (str(expr) parses back to the same interned Expr), weight names and reduce; then
  _traced        (torch._dynamo.nonstrict_trace: run as ordinary Python on fake tensors, not
                 bytecode-traced) validates the call exactly as eager does and picks the backend:
                 decompose  runs as is, so its native convNd and elementwise ops land in the graph
                            as standard aten ops (torch.export gives a portable graph);
                 direct     one opaque custom op, lambdaconv::direct_conv, whose eager kernel is
                            the backend "auto" (or the named one) picks at run time: triton's
                            generated kernels on CUDA, tiled elsewhere. Its backward is the custom
                            op lambdaconv::direct_conv_backward, which recomputes the forward with
                            autograd on and differentiates it, so the backward runs the same
                            backend's own backward kernels (cost: one extra forward per backward).
                            Under create_graph=True (eager calls of the op) the gradients come
                            from backends/composite.py instead, differentiable again.

Static arguments cross into the custom ops as strings (the canonical op and a JSON config); shapes
come from the tensors, so dynamic shapes need no new config. Eager calls never take this route.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import List, Optional

import torch
from torch import Tensor

from . import backends, calls
from .backends import composite
from .calls import _autocast_off, autocast_inputs, prepare_and_select
from .ir import OpSpec, resolve_op, resolve_reduce
from .plan import plan_for

# Backends with traceable=True (decompose: plain torch ops, autocast applied itself) run inline under
# compile / export; every other goes through the custom op.


def tracing() -> bool:
    """True under torch.compile (Dynamo) and torch.export (strict or not): take the compile route."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


@torch.compiler.assume_constant_result
def _static(op, reduce) -> tuple:
    """(canonical op string, weight names, reduce, error) of an op: called once at Dynamo trace
    time. A bad op comes back as (error type, message), raised by the traced caller: an exception
    escaping here would surface as an internal Dynamo error."""
    try:
        spec = resolve_op(op)
        return str(spec.expr), spec.weight_names, resolve_reduce(spec, reduce), ()
    except (ValueError, TypeError) as err:
        return "", (), "", (type(err).__name__, str(err))


@lru_cache(maxsize=256)
def _spec(text: str, names: tuple, reduce: str) -> OpSpec:
    """The OpSpec for a canonical string, keeping the caller's weight names and order (a callable
    may name a parameter its expression does not use; eager validation counts it)."""
    return OpSpec(resolve_op(text).expr, names, reduce, text)


def _warm(spec: OpSpec, reduce: str) -> None:
    """Fill the plan and decompose caches outside any fake / proxy mode: building them evaluates
    constants with real tensors (g(0) in float64), which a fake tensor cannot answer."""
    from torch.utils._python_dispatch import _disable_current_modes

    from .backends.decompose import _lowering

    with _disable_current_modes():
        if plan_for(spec, reduce).strategy == "decompose":
            _lowering(spec)


def _nonstrict(fn):
    # torch >= 2.7: Dynamo calls fn as plain Python on fake tensors and records the ops it runs.
    # Older torch: a graph break around it (compile works, fullgraph=True does not).
    deco = getattr(torch._dynamo, "nonstrict_trace", None)
    return deco(fn) if deco is not None else torch.compiler.disable(fn)


def compiled_conv(d, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode,
                  backend):
    """convnd under torch.compile / torch.export (see the module docstring)."""
    if not isinstance(weights, dict):
        raise TypeError(f"weights must be a dict name -> tensor, got {type(weights).__name__}")
    text, names, reduce, error = _static(op, reduce)
    if error:
        raise (TypeError if error[0] == "TypeError" else ValueError)(error[1] + "")
    # Rebuilt as fresh constants: Dynamo cannot guard on the constant-result's own source, which
    # passing it into the nonstrict function would need (torch 2.13 raises NotImplementedError).
    text, names, reduce = text + "", tuple(n + "" for n in names), reduce + ""
    geometry = (stride, padding, dilation, groups, padding_mode, backend)
    return _traced(d, input, weights, () if bias is None else (bias,), text, names, reduce, geometry)


@_nonstrict
def _traced(d, x, weights, bias, text, names, reduce, geometry):
    stride, padding, dilation, groups, padding_mode, backend = geometry
    spec = _spec(text, tuple(names), reduce)
    bias = bias[0] if bias else None
    xb, b, ws, call, unbatched, be = prepare_and_select(d, x, spec, weights, bias, stride, padding, dilation, groups,
                                                        reduce, padding_mode, backend, shown=text)
    if calls.nothing_to_compute(call):
        y = calls.no_kernel(xb, b, ws, call)
    elif be.traceable:
        _warm(spec, reduce)
        y = be.run(xb, b, ws, call)
    else:
        xb, b, ws = autocast_inputs(xb, b, ws)
        y = torch.ops.lambdaconv.direct_conv(xb, list(ws.values()), b, text, _config(d, call, names, stride,
                                             padding, dilation, groups, padding_mode, backend))
    return y[0] if unbatched else y


def _config(d, call, names, stride, padding, dilation, groups, padding_mode, backend) -> str:
    g = call.geometry
    pad = padding if isinstance(padding, str) else [lo for lo, _ in g.pad]  # symmetric when not a string
    return json.dumps({"d": d, "names": list(names), "reduce": call.reduce, "stride": list(g.stride),
                       "padding": pad, "dilation": list(g.dilation), "groups": groups,
                       "padding_mode": padding_mode, "backend": backend}, sort_keys=True)


def _prepare(x, weights, bias, op, config):
    """The eager validation and backend choice, for the custom ops' kernels and fake kernels."""
    c = json.loads(config)
    spec = _spec(op, tuple(c["names"]), c["reduce"])
    padding = c["padding"] if isinstance(c["padding"], str) else tuple(c["padding"])
    xb, b, ws, call, _ = calls.prepare(c["d"], x, spec, dict(zip(c["names"], weights)), bias,
                                              tuple(c["stride"]), padding, tuple(c["dilation"]), c["groups"],
                                              c["reduce"], c["padding_mode"], c["backend"])
    return xb, b, ws, call, c["backend"]


def _run(x, weights, bias, op, config) -> Tensor:
    xb, b, ws, call, backend = _prepare(x, weights, bias, op, config)
    be = backends.select(backend, call)
    with _autocast_off(xb):
        return be.run(xb, b, ws, call)


def _composite(x, weights, bias, op, config) -> Tensor:
    """The same conv by its definition in torch ops (backends/composite.py): differentiable again."""
    xb, b, ws, call, _ = _prepare(x, list(weights), bias, op, config)
    with _autocast_off(xb):
        return composite.composite_conv(xb, b, ws, call)


# ------------------------------------------------------------------------------------- custom ops

@torch.library.custom_op("lambdaconv::direct_conv", mutates_args=())
def direct_conv(x: Tensor, weights: List[Tensor], bias: Optional[Tensor], op: str, config: str) -> Tensor:
    """y = the direct conv of x (batched) with `op` (canonical string) under `config` (JSON)."""
    # contiguous: the fake kernel promises a contiguous output, whatever layout the backend returns
    return _run(x, weights, bias, op, config).contiguous()


@direct_conv.register_fake
def _direct_conv_fake(x, weights, bias, op, config):
    _, _, _, call, _ = _prepare(x, weights, bias, op, config)
    g = call.geometry
    return x.new_empty((g.batch, g.out_channels) + tuple(g.out_size))


@torch.library.custom_op("lambdaconv::direct_conv_backward", mutates_args=())
def direct_conv_backward(grad: Tensor, x: Tensor, weights: List[Tensor], bias: Optional[Tensor], op: str,
                         config: str, needs: List[bool]) -> List[Tensor]:
    """Gradients of direct_conv for (x, *weights, bias); an empty tensor where `needs` is False."""
    inputs = [x, *weights, bias]
    leaves = [None if t is None else t.detach().requires_grad_(n) for t, n in zip(inputs, needs)]
    wanted = [t for t, n in zip(leaves, needs) if n]
    with _autograd_dispatch(), torch.enable_grad():
        y = _run(leaves[0], leaves[1:-1], leaves[-1], op, config)
        got = iter(torch.autograd.grad(y, wanted, grad, allow_unused=True) if wanted else ())
    out = []
    for t, n in zip(inputs, needs):
        if not n:
            out.append(grad.new_empty(0))
            continue
        gt = next(got)
        out.append(torch.zeros_like(t, memory_format=torch.contiguous_format) if gt is None else gt.contiguous())
    return out


def _autograd_dispatch():
    """Custom-op kernels run with the Autograd dispatch keys excluded (torch._library.autograd
    redispatches below autograd), so enable_grad alone records nothing; the recompute needs a
    graph, and the backends' own backward uses autograd for the padding. Lift that exclusion for
    this block only: every tensor in it is a detached leaf made here."""
    keys = torch._C._dispatch_tls_local_exclude_set()
    for name in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        keys = keys.remove(getattr(torch._C.DispatchKey, name))
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), keys)


@direct_conv_backward.register_fake
def _direct_conv_backward_fake(grad, x, weights, bias, op, config, needs):
    inputs = [x, *weights, bias]
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device) if n else grad.new_empty(0)
            for t, n in zip(inputs, needs)]


def _setup_context(ctx, inputs, output):
    x, weights, bias, op, config = inputs
    ctx.save_for_backward(x, bias, *weights)
    ctx.op, ctx.config = op, config


def _backward(ctx, grad):
    x, bias, *weights = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    needs = [bool(need_x), *map(bool, need_w), bool(need_b) and bias is not None]
    if torch.is_grad_enabled():
        # create_graph=True (eager only: AOTAutograd traces backward without it): the custom op's
        # gradients would be constants to autograd, so differentiate the definition instead
        grads = composite.graph_grads(lambda x, *wb: _composite(x, wb[:-1], wb[-1], ctx.op, ctx.config),
                                      [x, *weights, bias], needs, grad)
        return grads[0], grads[1:-1], grads[-1], None, None
    grads = torch.ops.lambdaconv.direct_conv_backward(grad, x, weights, bias, ctx.op, ctx.config, needs)
    g = [t if n else None for t, n in zip(grads, needs)]
    return g[0], g[1:-1], g[-1], None, None


direct_conv.register_autograd(_backward, setup_context=_setup_context)
