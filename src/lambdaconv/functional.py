"""lc.conv1d / conv2d / conv3d: validate everything, then hand the call to one backend.

Every check runs before any kernel: wrong types raise TypeError, wrong values ValueError, with
the op and the shapes appended so that the message says which call failed (einops style).
"""
from __future__ import annotations

import torch

from . import backends, calls, library
from .backends import composite
from .backends.composite import transform_active
from .calls import _context, no_kernel, nothing_to_compute, prepare  # noqa: F401 (prepare: public for tests)
from .ir import resolve_op, with_grad
from .settings import interpreting

def conv1d(input, op, weights, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           reduce=None, padding_mode="zeros", backend="auto", grad=None, post=None):
    """1-d convolution whose per-tap operation is `op` and whose reduction is `reduce`.

    See conv2d; weights broadcast to (out_channels, in_channels/groups, kL)."""
    return convnd(1, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend,
                  grad, post)


def conv2d(input, op, weights, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           reduce=None, padding_mode="zeros", backend="auto", grad=None, post=None):
    """2-d convolution whose per-tap operation is `op` and whose reduction is `reduce`.

    y[n, o, p] = REDUCE over (c in o's group, k in window) of
                 op(x_pad[n, c, p*stride + k*dilation], w[o, c, k] for each weight) + bias[o]

    Args:
        input: (N, C, H, W) or unbatched (C, H, W), float64/32/16 or bfloat16.
        op: a callable `lambda x, A, B: A * (x - B)`, a string "A*(x-B)" (input named x), or a
            preset: "linear", "offset", "quadratic", "adder", "l2", "dilation", "erosion".
        weights: dict name -> tensor broadcastable to (out_channels, in_channels/groups, kH, kW);
            their broadcast shape gives out_channels and the kernel size.
        bias: optional (out_channels,), added after the reduction.
        stride, padding, dilation, groups: as torch.nn.functional.conv2d; padding may be "same".
        reduce: "sum", "mean", "max", "min", "logsumexp"; None: the preset's, else "sum".
        padding_mode: "zeros" (padded taps see x = 0 and go through op), "reflect", "replicate",
            "circular", or "ignore" (padded taps are left out of the reduction).
        backend: "auto", "tiled", "reference", or another registered backend.
        op may also be a dict of named terms, each reduced over the same window ({"s": "x*W",
            "nx": "x*x"}), with reduce a string, a dict name -> reduce, or per term a pair
            (inner, outer) for two-level reductions (OUTER over channels of INNER over each
            channel's taps); see lambdaconv.terms.
        post: an expression string or a callable (keyword arguments: the term names and weights)
            evaluated per output element on the reduced terms and weights of shape (out_channels,)
            or (), before the bias. A single op's reduced value is named `y`.
        grad: optional dict mapping "x" and/or weight names to an expression (string, or a callable
            of the op's variables) used as that per-tap partial derivative in place of the exact
            one (straight-through estimators, AdderNet's full-precision gradients); the reduction's
            weighting, the chain rule and the bias are unchanged. Runs on the direct backends.

    >>> import torch, lambdaconv as lc
    >>> x = torch.randn(2, 3, 8, 8)
    >>> w = {"A": torch.randn(4, 3, 3, 3), "B": torch.randn(4, 3, 3, 3)}
    >>> lc.conv2d(x, "A*(x-B)", w, padding=1).shape
    torch.Size([2, 4, 8, 8])
    """
    return convnd(2, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend,
                  grad, post)


def conv3d(input, op, weights, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           reduce=None, padding_mode="zeros", backend="auto", grad=None, post=None):
    """3-d convolution whose per-tap operation is `op` and whose reduction is `reduce`.

    See conv2d; weights broadcast to (out_channels, in_channels/groups, kD, kH, kW)."""
    return convnd(3, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend,
                  grad, post)


# Validated calls by signature: a training loop calls the same layer with the same shapes every
# step, and validation (op lookup, broadcast_shapes, geometry, backend choice) costs more host time
# than a small GPU conv takes to run. Everything prepare() checks is a function of the key.
_PREPARED: dict = {}


_PREPARED_MAX = 1024


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def _signature(d, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend):
    """The cache key of a call, or None when some argument is not a tensor (validation names it).
    Also whether every weight already has d + 2 dims (then no reshape is needed per call)."""
    if not isinstance(input, torch.Tensor) or type(weights) is not dict:
        return None, False
    ws = []
    full = True
    for n, w in weights.items():
        if not isinstance(w, torch.Tensor):
            return None, False
        shape = w.shape
        ws.append((n, shape, w.dtype, w.device))
        full = full and len(shape) == d + 2
    if bias is None:
        bk = None
    elif isinstance(bias, torch.Tensor):
        bk = (bias.shape, bias.dtype, bias.device)
    else:
        return None, False
    if not isinstance(op, str):  # a callable: keyed by its guarded trace (a changed capture re-traces)
        try:
            op = resolve_op(op)
        except (ValueError, TypeError):  # validation raises it again, with the call's context
            return None, False
    return (d, op, tuple(ws), input.shape, input.dtype, input.device, bk,
            tuple(stride) if type(stride) is list else stride, tuple(padding) if type(padding) is list else padding,
            tuple(dilation) if type(dilation) is list else dilation, groups, reduce, padding_mode, backend,
            torch.are_deterministic_algorithms_enabled(), interpreting()), full


def _runner(b, call, backend, x, bias, ws):
    """(x, bias, ws) -> y for a validated call: decompose's own runner (everything fixed per call
    decided once, specialized to these tensors' dtypes and shapes, which the cache key holds), else
    the backend through the direct path's autocast handling."""
    if nothing_to_compute(call):
        return lambda x, bias, ws: no_kernel(x, bias, ws, call)
    if b.runner_for is not None:
        return b.runner_for(call, x, bias, ws)
    if b.traceable:
        return lambda x, bias, ws: b.run(x, bias, ws, call)
    return lambda x, bias, ws: calls.run_direct(b, x, bias, ws, call, lambda c: backends.select(backend, c))


def convnd(d, input, op, weights, bias=None, stride=1, padding=0, dilation=1, groups=1, reduce=None,
           padding_mode="zeros", backend="auto", grad=None, post=None):
    if post is not None or type(op) is dict or (reduce is not None and type(reduce) is not str):
        from . import terms  # deferred: terms.py calls back into convnd for each term
        return terms.conv_terms(d, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode,
                                backend, grad, post)
    if grad is not None:  # the op with its overridden partials: an OpSpec, cached as one
        try:
            op = with_grad(resolve_op(op), grad)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{err}{_context(op, input, weights)}") from None
        if library.tracing() or transform_active():
            raise NotImplementedError("grad= overrides run in eager mode only: under torch.compile, torch.export "
                                      "and torch.func transforms lambdaconv differentiates the definition")
    if library.tracing():  # torch.compile / torch.export: no op resolution in the traced code
        return library.compiled_conv(d, input, op, weights, bias, stride, padding, dilation, groups, reduce,
                                     padding_mode, backend)
    if transform_active():  # vmap / grad / jvp...: torch ops only, never the cached kernels (composite.py)
        return _transformed(d, input, op, weights, bias, stride, padding, dilation, groups, reduce,
                            padding_mode, backend)
    key, full = _signature(d, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode,
                           backend)
    try:
        hit = _PREPARED.get(key) if key is not None else None
    except TypeError:  # an unhashable argument (validation names it, or it is cached nowhere)
        key = hit = None
    if hit is not None:
        call, run, unbatched, names, as_given = hit
        x = input[None] if unbatched else input
        if full:  # validation checked the names; a backend's runner reads weights by name, never mutates
            ws = weights if as_given else {n: weights[n] for n in names}
        else:
            ws = {n: w if w.dim() == d + 2 else w.reshape((1,) * (d + 2 - w.dim()) + tuple(w.shape))
                  for n, w in ((n, weights[n]) for n in names)}
    else:
        try:
            x, bias, ws, call, unbatched = prepare(d, input, op, weights, bias, stride, padding, dilation, groups,
                                                   reduce, padding_mode, backend)
            b = backends.select(backend, call)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{err}{_context(op, input, weights)}") from None
        run = _runner(b, call, backend, x, bias, ws)
        if key is not None:
            if len(_PREPARED) >= _PREPARED_MAX:
                _PREPARED.clear()
            _PREPARED[key] = (call, run, unbatched, call.spec.weight_names, b.runner_for is not None)
    y = run(x, bias, ws)
    return y[0] if unbatched else y


def _transformed(d, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend):
    """convnd under a torch.func transform (backends/composite.py): validated as always, never cached (the cached
    runners are the fast kernels); the selected backend if it is torch ops only (decompose plans
    stay native convolutions), else the composite path (a named "tiled" or "triton" too)."""
    x, bias, ws, call, unbatched, b = calls.prepare_and_select(d, input, op, weights, bias, stride, padding,
                                                                 dilation, groups, reduce, padding_mode, backend,
                                                                 shown=op)
    if b.pure:
        y = b.run(x, bias, ws, call)
    else:
        y = calls.run_direct(composite.COMPOSITE, x, bias, ws, call, lambda c: composite.COMPOSITE)
    return y[0] if unbatched else y
