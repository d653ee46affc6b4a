"""Transposed lambda convolutions: the adjoint placement of taps, with only real input values as taps.

    y[n, o, q] = REDUCE over (c in o's group, k, p) with q = p*stride - padding + k*dilation of
                 op(x[n, c, p], w[c, o_in_group, k]) + bias[o]

Computed as the equivalent stride-1 convolution over the zero-inserted input with the flipped
kernel, whose inserted zeros and padding are no taps (the "ignore" rule, Geometry.holes): an output
that no tap reaches holds the reduction's identity, and mean divides by the taps that reach it. For
the linear op with sum this is exactly F.conv_transposeNd. Gradients flow through the rearranging
torch ops into the backend's own. The direct backends that take inserted zeros run it (tiled, the
reference); decompose and the triton kernels do not yet.
"""
from __future__ import annotations

import torch

from . import backends, calls
from .backends import registry
from .geometry import Geometry, _tuple
from .ir import resolve_op, resolve_reduce, with_grad


def conv_transpose_nd(d, input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                      dilation=1, reduce=None, backend="auto", grad=None):
    try:
        x, ws, bias, call, unbatched = _prepare(d, input, op, weights, bias, stride, padding, output_padding,
                                                groups, dilation, reduce, backend, grad)
        b = registry.select(backend, call)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err}{calls._context(op, input, weights)}") from None
    if calls.nothing_to_compute(call):
        y = calls.no_kernel(x, bias, ws, call)
    else:
        y = calls.run_direct(b, x, bias, ws, call, lambda c: registry.select(backend, c))
    return y[0] if unbatched else y


def _prepare(d, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce, backend, grad):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    spec = with_grad(resolve_op(op), grad)
    reduce = resolve_reduce(spec, reduce)
    registry.check_name(backend)
    if input.dim() not in (d + 1, d + 2):
        raise ValueError(f"conv_transpose{d}d expects a {d + 2}-D input (N, C, *spatial) or {d + 1}-D unbatched "
                         f"input, got a {input.dim()}-D input of shape {tuple(input.shape)}")
    unbatched = input.dim() == d + 1
    x = input[None] if unbatched else input
    calls.check_weight_names(spec, weights)
    for n in spec.weight_names:
        t = weights[n]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"weight {n!r} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"weight {n!r} has dtype {t.dtype}; weights must be floating point")
        if t.dim() > d + 2:
            raise ValueError(f"weight {n!r} has {t.dim()} dims; at most {d + 2} (in_channels, out_channels/groups, "
                             f"*kernel)")
    shapes = [(1,) * (d + 2 - weights[n].dim()) + tuple(weights[n].shape) for n in spec.weight_names]
    full = tuple(torch.broadcast_shapes(*shapes))
    c, og, kernel = full[0], full[1], full[2:]
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if x.shape[1] % groups or (c != 1 and c != x.shape[1]):
        raise ValueError(f"channels mismatch: the weights' broadcast shape {full} is (in_channels, "
                         f"out_channels/groups, *kernel) but the input has {x.shape[1]} channels (groups={groups})")
    c = x.shape[1]
    if 0 in kernel or og == 0:
        raise ValueError(f"the weights' broadcast shape {full} has a zero-size dim")
    s, p, op_, dl = (_tuple(v, d, name) for v, name in ((stride, "stride"), (padding, "padding"),
                                                      (output_padding, "output_padding"), (dilation, "dilation")))
    if min(s) < 1 or min(dl) < 1 or min(p) < 0 or min(op_) < 0:
        raise ValueError(f"stride and dilation must be positive, padding and output_padding non-negative; got "
                         f"stride={s}, padding={p}, output_padding={op_}, dilation={dl}")
    if any(o >= max(a, b) for o, a, b in zip(op_, s, dl)):
        raise ValueError(f"output_padding {op_} must be smaller than stride {s} or dilation {dl} (as in torch)")
    # the zero-inserted input, padded by (k - 1) * dilation - padding (cropped where that is negative)
    n, in_size = x.shape[0], tuple(x.shape[2:])
    up = tuple((i - 1) * st + 1 for i, st in zip(in_size, s))
    xu = x.new_zeros((n, c) + up)
    xu[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in s)] = x
    pads, holes, crop = [], [], []
    for i, (k, st, pi, oi, di) in enumerate(zip(kernel, s, p, op_, dl)):
        lo = (k - 1) * di - pi
        hi = lo + oi
        a, b = max(0, -lo), up[i] - max(0, -hi)
        if b <= a:
            raise ValueError(f"padding {p} removes the whole input (size {in_size}, kernel {kernel})")
        crop.append(slice(a, b))
        pads.append((max(0, lo), max(0, hi)))
        holes.append((st, a))
    xu = xu[(slice(None), slice(None)) + tuple(crop)]
    out_size = tuple(u + lo + hi - di * (k - 1) for u, (lo, hi), k, di in zip(xu.shape[2:], pads, kernel, dl))
    cg, o = c // groups, og * groups
    flip = tuple(range(2, d + 2))
    ws = {}
    for name, shape in zip(spec.weight_names, shapes):
        t = weights[name].reshape(shape).expand((c, og) + kernel)
        t = t.reshape((groups, cg, og) + kernel).transpose(1, 2).reshape((o, cg) + kernel).flip(flip)
        ws[name] = t
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (o,):
            raise ValueError(f"bias must be a tensor of shape ({o},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    g = Geometry(d, n, c, o, groups, tuple(xu.shape[2:]), kernel, (1,) * d, dl, tuple(pads), "ignore", out_size,
                 tuple(holes))
    return xu, ws, bias, backends.Call(spec, reduce, g, x.device, x.dtype), unbatched


def conv_transpose1d(input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     reduce=None, backend="auto", grad=None):
    """1-d transposed convolution whose per-tap operation is `op` (see conv_transpose2d)."""
    return conv_transpose_nd(1, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce,
                             backend, grad)


def conv_transpose2d(input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     reduce=None, backend="auto", grad=None):
    """2-d transposed convolution whose per-tap operation is `op`, argument order and output size as
    torch.nn.functional.conv_transpose2d; weights broadcast to (in_channels, out_channels/groups, kH, kW).

    y[n, o, q] = REDUCE over (c, k, p) with q = p*stride - padding + k*dilation of op(x[n, c, p], w[c, o, k])
    + bias[o]: only real input values are taps (no inserted zeros go through op); an output no tap
    reaches holds the reduction's identity; mean divides by the taps that reach it.

    >>> import torch, lambdaconv as lc
    >>> x = torch.randn(2, 4, 5, 5)
    >>> lc.conv_transpose2d(x, "adder", {"weight": torch.randn(4, 3, 3, 3)}, stride=2, padding=1).shape
    torch.Size([2, 3, 9, 9])
    """
    return conv_transpose_nd(2, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce,
                             backend, grad)


def conv_transpose3d(input, op, weights, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                     reduce=None, backend="auto", grad=None):
    """3-d transposed convolution whose per-tap operation is `op` (see conv_transpose2d)."""
    return conv_transpose_nd(3, input, op, weights, bias, stride, padding, output_padding, groups, dilation, reduce,
                             backend, grad)
