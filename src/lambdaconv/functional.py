"""lc.conv1d / conv2d / conv3d: validate everything, then hand the call to one backend.

Every check runs before any kernel: wrong types raise TypeError, wrong values ValueError, with
the op and the shapes appended so that the message says which call failed (einops style).
"""
from __future__ import annotations

import torch

from . import backends, library
from .backends import composite
from .backends.composite import transform_active
from .settings import interpreting
from .geometry import make_geometry
from .ir import resolve_op, resolve_reduce

_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def conv1d(input, op, weights, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           reduce=None, padding_mode="zeros", backend="auto"):
    """1-d convolution whose per-tap operation is `op` and whose reduction is `reduce`.

    See conv2d; weights broadcast to (out_channels, in_channels/groups, kL)."""
    return convnd(1, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend)


def conv2d(input, op, weights, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           reduce=None, padding_mode="zeros", backend="auto"):
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

    >>> import torch, lambdaconv as lc
    >>> x = torch.randn(2, 3, 8, 8)
    >>> w = {"A": torch.randn(4, 3, 3, 3), "B": torch.randn(4, 3, 3, 3)}
    >>> lc.conv2d(x, "A*(x-B)", w, padding=1).shape
    torch.Size([2, 4, 8, 8])
    """
    return convnd(2, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend)


def conv3d(input, op, weights, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           reduce=None, padding_mode="zeros", backend="auto"):
    """3-d convolution whose per-tap operation is `op` and whose reduction is `reduce`.

    See conv2d; weights broadcast to (out_channels, in_channels/groups, kD, kH, kW)."""
    return convnd(3, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend)


def _context(op, x, weights) -> str:
    if isinstance(weights, dict):
        shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in weights.items()}
    else:  # never the values: a tensor's repr is thousands of lines
        shapes = f"{type(weights).__name__} {tuple(weights.shape)}" if isinstance(weights, torch.Tensor) \
            else type(weights).__name__
    xs = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
    return f"\n  in lambdaconv conv with op={op if isinstance(op, str) else getattr(op, '__name__', op)!r}, " \
           f"input {xs}, weights {shapes}"


def _check_tensor(what: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """A weight's or the bias's dtype, layout and device, as torch checks its conv's (torch wants
    the input's dtype exactly; here any floating dtype is cast, as documented). An integer, bool
    or complex one would be cast silently (a complex one losing its imaginary part)."""
    if t.dtype not in _DTYPES:
        raise ValueError(f"{what} has dtype {t.dtype}; use a floating dtype (float64, float32, float16 or "
                         f"bfloat16)")
    if t.layout != torch.strided:
        raise ValueError(f"{what} must be a dense (strided) tensor, got layout {t.layout}")
    if t.device != x.device:
        raise ValueError(f"{what} is on {t.device} but the input is on {x.device}")


def prepare(d, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend):
    """Validate a call; returns (x, bias, weights, Call, unbatched). Raises before any kernel."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    spec = resolve_op(op)
    reduce = resolve_reduce(spec, reduce)
    backends.registry.check_name(backend)
    if not isinstance(padding_mode, str):
        raise TypeError(f"padding_mode must be a string, got {type(padding_mode).__name__}")
    if input.dtype not in _DTYPES:
        raise ValueError(f"input dtype {input.dtype} is not supported; use float64, float32, float16 or bfloat16")
    if input.layout != torch.strided:
        raise ValueError(f"input must be a dense (strided) tensor, got layout {input.layout}")
    unbatched = input.dim() == d + 1
    if input.dim() not in (d + 1, d + 2):
        raise ValueError(f"conv{d}d expects a {d + 2}-D input (N, C, *spatial) or {d + 1}-D unbatched input, "
                         f"got a {input.dim()}-D input of shape {tuple(input.shape)}")
    x = input[None] if unbatched else input
    if not isinstance(weights, dict):
        raise TypeError(f"weights must be a dict name -> tensor, got {type(weights).__name__}")
    missing = [n for n in spec.weight_names if n not in weights]
    if missing:
        raise ValueError(f"the op needs weight{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                         f"but weights has {sorted(weights) or 'none'}")
    extra = [n for n in weights if n not in spec.weight_names]
    if extra:
        raise ValueError(f"weights {', '.join(map(repr, extra))} are not used by the op {spec.expr} "
                         f"(its weights: {', '.join(spec.weight_names) or 'none'})")
    if not spec.weight_names:
        raise ValueError(f"the op {spec.expr} has no weights, so out_channels and the kernel size are unknown")
    ws = {}
    for n in spec.weight_names:
        w = weights[n]
        if isinstance(w, (int, float)) and not isinstance(w, bool):
            w = torch.tensor(float(w), dtype=x.dtype, device=x.device)
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"weight {n!r} must be a tensor or a number, got {type(w).__name__}")
        _check_tensor(f"weight {n!r}", w, x)
        if w.dim() > d + 2:
            raise ValueError(f"weight {n!r} has {w.dim()} dims; conv{d}d weights have at most {d + 2} "
                             f"(out_channels, in_channels/groups, *kernel)")
        ws[n] = w.reshape((1,) * (d + 2 - w.dim()) + tuple(w.shape))
    try:
        wshape = torch.broadcast_shapes(*(w.shape for w in ws.values()))
    except RuntimeError:
        raise ValueError("weights do not broadcast together: "
                         + ", ".join(f"{n} {tuple(w.shape)}" for n, w in ws.items())) from None
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a tensor or None, got {type(bias).__name__}")
        _check_tensor("bias", bias, x)
        if tuple(bias.shape) != (wshape[0],):
            raise ValueError(f"bias must have shape ({wshape[0]},) (out_channels), got {tuple(bias.shape)}")
    g = make_geometry(d, tuple(x.shape), tuple(wshape), stride, padding, dilation, groups, padding_mode)
    call = backends.Call(spec, reduce, g, x.device, x.dtype)
    return x, bias, ws, call, unbatched


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


def nothing_to_compute(call) -> bool:
    """Meta tensors or zero input channels: no_kernel gives the output (eager and compiled routes)."""
    return call.device.type == "meta" or call.geometry.in_channels == 0


def no_kernel(x, bias, ws: dict, call) -> torch.Tensor:
    """The output of a call that has nothing to compute, with no backend run: on the meta device
    (shapes only: FSDP-style deferred initialisation, shape inference), and for zero input channels,
    where torch's convolutions return an empty (N, 0, *out) output whatever out_channels is (a
    deliberate torch convention: its meta kernel agrees). Output dtype = input dtype, as a backend's.
    Every input enters through a zero-element slice, so autograd gives each a gradient of its own
    shape (zeros, as torch's conv gives the weight and bias here) and never NaN from inf * 0."""
    g = call.geometry
    shape = (g.batch, g.out_channels if g.in_channels else 0) + tuple(g.out_size)
    anchor = sum(t.narrow(0, 0, 0).sum().to(x.dtype) for t in (x, *ws.values(), *(() if bias is None else (bias,))))
    return x.new_zeros(shape) + anchor


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
    return lambda x, bias, ws: library.run_direct(b, x, bias, ws, call, lambda c: backends.select(backend, c))


def convnd(d, input, op, weights, bias=None, stride=1, padding=0, dilation=1, groups=1, reduce=None,
           padding_mode="zeros", backend="auto"):
    if library.tracing():  # torch.compile / torch.export: no op resolution in the traced code
        return library.compiled_conv(d, input, op, weights, bias, stride, padding, dilation, groups, reduce,
                                     padding_mode, backend)
    if transform_active():  # vmap / grad / jvp...: torch ops only, never the cached kernels (composite.py)
        return composite.convnd(d, input, op, weights, bias, stride, padding, dilation, groups, reduce,
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
