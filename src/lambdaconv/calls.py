"""A call, from the user's arguments to the backend that runs it: validation (prepare), the backend
choice, the output of calls with nothing to compute, and autocast around a direct backend.

Every route goes through here: the eager functional.convnd (cached per call signature), the compile
route (library.py), torch.func transforms (functional), explain(). It imports backends, geometry
and the IR, and nothing above it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import backends
from .backends.composite import transform_active
from .geometry import broadcast_shapes, make_geometry
from .ir import resolve_op, resolve_reduce

_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


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
    x, unbatched = check_input(d, input)
    check_weight_names(spec, weights)
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
        wshape = broadcast_shapes(*(w.shape for w in ws.values()))
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


def check_input(d, input):
    """(the input batched, whether it was unbatched), after checking its dtype, layout and rank."""
    if input.dtype not in _DTYPES:
        raise ValueError(f"input dtype {input.dtype} is not supported; use float64, float32, float16 or bfloat16")
    if input.layout != torch.strided:
        raise ValueError(f"input must be a dense (strided) tensor, got layout {input.layout}")
    unbatched = input.dim() == d + 1
    if input.dim() not in (d + 1, d + 2):
        raise ValueError(f"conv{d}d expects a {d + 2}-D input (N, C, *spatial) or {d + 1}-D unbatched input, "
                         f"got a {input.dim()}-D input of shape {tuple(input.shape)}")
    return (input[None] if unbatched else input), unbatched


def check_weight_names(spec, weights) -> None:
    """weights is a dict with exactly the op's weight names (TypeError / ValueError naming them)."""
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


def prepare_and_select(d, x, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode,
                       backend, shown):
    """prepare and the backend choice, errors with the call's context (op shown as `shown`):
    (x, bias, weights, call, unbatched, backend). For the calls that bypass convnd's cache."""
    try:
        xb, b, ws, call, unbatched = prepare(d, x, op, weights, bias, stride, padding, dilation,
                                                         groups, reduce, padding_mode, backend)
        return xb, b, ws, call, unbatched, backends.select(backend, call)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err}{_context(shown, x, weights)}") from None


# ---------------------------------------------------------------------------------------- autocast

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu")


def autocast_inputs(x: Tensor, bias, weights: dict):
    """What autocast does to nn.ConvNd's inputs: floating tensors other than float64 are cast to
    the autocast dtype (a float64 input stays float64). The backends then compute in float32 from
    those low-precision values and return the low-precision dtype, as the native conv does."""
    dev = x.device.type
    if dev not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(dev) or x.dtype == torch.float64:
        return x, bias, weights
    dt = torch.get_autocast_dtype(dev)

    def cast(t):
        return t.to(dt) if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t

    return cast(x), cast(bias), {n: cast(w) for n, w in weights.items()}


def _autocast_off(x: Tensor):
    # Inside a backend the precision is the backend's (float32 accumulation): autocast must not
    # re-cast its internal matmuls and reductions.
    return torch.autocast(x.device.type, enabled=False) if x.device.type in _AUTOCAST_DEVICES \
        else _Null()


class _Null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_direct(b, x, bias, ws: dict, call, select):
    """Eager direct path: autocast casts, then the backend with autocast off. `select` re-picks the
    backend when the cast changed the dtype (a backend may support one dtype and not another).
    Under no_grad the inputs go in detached: an autograd Function still sees needs_input_grad for a
    tensor that requires grad (a module's parameters at inference), and max / min would save their
    winning taps for a backward that never runs (the Gluon forward saving winners ran at 0.39-0.43 ms
    against 0.170 ms without, H100, N16 C64 O64 56x56)."""
    if not torch.is_grad_enabled() and not transform_active():
        x = x.detach()
        bias = None if bias is None else bias.detach()
        ws = {n: w.detach() for n, w in ws.items()}
    dev = x.device.type
    if dev not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(dev):
        # autocast is off for x's device: nothing to cast, nothing to turn off (entering
        # autocast(enabled=False) would cost more host time than a small conv's kernels)
        return b.run(x, bias, ws, call)
    x2, bias2, ws2 = autocast_inputs(x, bias, ws)
    if x2.dtype != x.dtype:
        call = backends.Call(call.spec, call.reduce, call.geometry, call.device, x2.dtype)
        b = select(call)
    with _autocast_off(x2):
        return b.run(x2, bias2, ws2, call)


# ----------------------------------------------------------------------------------- compile route
