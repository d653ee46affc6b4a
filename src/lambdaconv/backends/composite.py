"""The composite path: the conv by its definition (reference.py) in plain differentiable torch ops,
in the compute dtype (float64 stays float64, everything else float32), output in the input dtype.

Every autograd feature and every torch.func transform works through plain torch ops; the direct
backends' fast kernels are once-differentiable and vmap / jvp know nothing of them. So two cases
run here instead, never a normal training step:

- create_graph=True through a direct op (gradient penalties, Hessians): the direct Functions'
  backward (tiled, triton, library's custom op) calls graph_grads, which recomputes the forward
  here from the saved tensors and differentiates it with create_graph=True, so the gradients are
  differentiable again, exactly.
- a torch.func transform (vmap, grad, jacrev, jvp, hessian) or forward-mode AD is active:
  functional.convnd runs composite_conv (or a pure backend) through functional._transformed; decompose plans still run as native convolutions (aten ops only).

Cost: the whole (N, O, C/groups, K, P) taps tensor is materialized, like unfold + broadcast
(docs/guide.md says so): memory is the price of exactness here.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as _fwad

from ..reference import reference_conv
from . import registry
from .registry import Backend


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed (and accumulated) in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def transform_active() -> bool:
    """A torch.func transform (vmap, grad, jvp, ...) is running, or forward-mode AD
    (torch.autograd.forward_ad.dual_level) is on: one C call and one read, about 0.1 us."""
    return torch._C._are_functorch_transforms_active() or _fwad._current_level >= 0


def composite_conv(x, bias, weights: dict, call) -> torch.Tensor:
    """A backend's run(): the definition in the compute dtype, differentiable any number of times."""
    y = reference_conv(x, call.spec, weights, bias, call.geometry, call.reduce, dtype=compute_dtype(x.dtype))
    return y.to(x.dtype)


# Not registered (not a choice under "auto"): calls.run_direct takes a Backend for its autocast
# handling.
COMPOSITE = Backend("composite", lambda call: None, composite_conv, None, "the definition in torch ops")


def graph_grads(fn, inputs: list, needs, gy) -> list:
    """The gradients of fn(*inputs) (with upstream gy) w.r.t. each input where `needs`, as a graph
    (create_graph=True): differentiable again w.r.t. the inputs and gy. None where not needed.

    Each input goes in as its own view: one tensor passed twice (the same weight as A and B) must
    get each slot's gradient, where grad w.r.t. the tensor itself would give both slots the total."""
    slots = [t.view_as(t) if n else t for t, n in zip(inputs, needs)]
    wanted = [t for t, n in zip(slots, needs) if n]
    got = iter(())
    if wanted:
        with torch.enable_grad():
            got = iter(torch.autograd.grad(fn(*slots), wanted, gy, create_graph=True, allow_unused=True))
    out = []
    for t, n in zip(inputs, needs):
        g = next(got) if n else None
        out.append(torch.zeros_like(t) if n and g is None else g)  # unused: the gradient is zero
    return out


def direct_backward(gy, x, wts, meta, needs, bias_dtype):
    """The backward of a direct Function (tiled, triton) under create_graph=True: (gx, gb, [gw, ...])
    from the saved x and weights, differentiable again. meta = (spec, geometry, reduce, weight
    names); needs = needs_input_grad for (x, bias, *weights). The bias gradient is gy's sum."""
    spec, g, reduce, names = meta
    if spec.grad:
        raise NotImplementedError("second derivatives (create_graph=True) through a conv with grad= overrides: "
                                  "the overridden partials have no derivative of their own here")
    call = registry.Call(spec, reduce, g, x.device, x.dtype)
    gx, *gws = graph_grads(lambda x, *w: composite_conv(x, None, dict(zip(names, w)), call), [x, *wts],
                           (needs[0], *needs[2:]), gy)
    gb = None
    if bias_dtype is not None and needs[1]:
        gb = gy.sum([0] + list(range(2, 2 + g.dims))).to(bias_dtype)
    return gx, gb, gws
