"""Conv1d / Conv2d / Conv3d modules: drop-in for nn.ConvNd, plus `op=` (and reduce, init, shapes).

A module only stores its arguments and one nn.Parameter per op weight (named after it) and calls
the functional conv (unfoldNd style).
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache
from numbers import Number

import torch
from torch import nn

from . import functional as F
from . import terms
from .backends import registry
from .geometry import PADDING_MODES, _tuple, broadcast_shapes
from .ir import resolve_op, resolve_reduce, with_grad
from .explain import explain

INITS = ("kaiming_uniform", "zeros", "ones", "normal", "uniform")


class _ConvNd(nn.Module):
    _dims = 0
    _check_names = True  # off only for the plain layer that reserved_names() inspects

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, op, reduce=None, init=None,
                 shapes=None, backend="auto", grad=None, post=None):
        super().__init__()
        d = self._dims
        multi = terms.is_terms(op, reduce, post)  # op={...}, reduce=(inner, outer) or post= (lambdaconv.terms)
        if multi:
            ts = terms.parse(op, reduce, post)
            if grad is not None:
                raise ValueError("grad= overrides apply to a single op with a single reduction, not to terms, "
                                 "two-level reductions or post=")
            names, post_only, shown = ts.weight_names + ts.post_weights, ts.post_weights, \
                ", ".join(f"{t.name}: {t.spec.source}" for t in ts.terms)
        else:
            spec = resolve_op(op)
            with_grad(spec, grad)  # validated now (names, expressions), applied per call
            names, post_only, shown = spec.weight_names, (), spec.expr
        if self._check_names:
            _check_weight_names(names, type(self))
        self.op = op  # kept as given: a string or preset pickles with the module
        self.reduce = reduce if multi else resolve_reduce(spec, reduce)
        self.post = post
        registry.check_name(backend)
        # zero channels or a zero-size kernel build, as nn.ConvNd's do (with a warning below)
        for name, v, least in (("in_channels", in_channels, 0), ("out_channels", out_channels, 0),
                               ("groups", groups, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise ValueError(f"{name} must be {'a positive' if least else 'a non-negative'} int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"unknown padding_mode {padding_mode!r}; expected one of {', '.join(PADDING_MODES)}")
        if not names or (multi and not ts.weight_names):
            raise ValueError(f"the op {shown} has no weights; a layer needs at least one")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, d, "kernel_size")
        if min(self.kernel_size) < 0:
            raise ValueError(f"kernel_size must be non-negative, got {self.kernel_size}")
        self.stride = _tuple(stride, d, "stride")
        self.padding = padding if isinstance(padding, str) else _tuple(padding, d, "padding")
        self.dilation = _tuple(dilation, d, "dilation")
        self.padding_mode, self.backend = padding_mode, backend
        self.grad = None if grad is None else dict(grad)  # per-tap partials in place of the exact ones
        init, shapes = dict(init or {}), dict(shapes or {})
        for what, table in (("init", init), ("shapes", shapes)):
            unknown = [k for k in table if k not in names]
            if unknown:
                raise ValueError(f"{what} names {', '.join(map(repr, unknown))}, which the op {shown} does not "
                                 f"have (its weights: {', '.join(names)})")
        self.init, self.shapes = init, shapes
        self.weight_names = names
        factory = {"device": device, "dtype": dtype}
        for n in names:
            shape = self._post_shape(n, shapes.get(n, "filter")) if n in post_only else self._shape(shapes.get(n, "full"))
            self.register_parameter(n, nn.Parameter(torch.empty(shape, **factory)))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        if 0 in (in_channels, out_channels) + self.kernel_size:
            # nn.ConvNd builds these too, warning that initializing zero-element tensors is a no-op
            runs = "its output has 0 channels, as nn.ConvNd's" if in_channels == 0 and out_channels and \
                min(self.kernel_size) else "its forward raises a ValueError (nn.ConvNd's raises too)"
            warnings.warn(f"{type(self).__name__}(in_channels={in_channels}, out_channels={out_channels}, "
                          f"kernel_size={self.kernel_size}) has zero-element weights: {runs}", UserWarning,
                          stacklevel=2)
        self.reset_parameters()

    def _full_shape(self) -> tuple:
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    def _filter_shape(self) -> tuple:  # one value per output channel
        return (self.out_channels,) + (1,) * (1 + self._dims)

    def _post_shape(self, n, s) -> tuple:
        """A weight only post reads: one value per output channel ("filter", the default) or one ("scalar")."""
        if s == "filter":
            return (self.out_channels,)
        if s == "scalar":
            return ()
        if isinstance(s, (tuple, list)) and math.prod(s) in (1, self.out_channels) and all(v == 1 for v in s[1:]):
            return tuple(s)
        raise ValueError(f"shapes[{n!r}]: {n!r} is read only by post, so it broadcasts to (out_channels,): give "
                         f"'filter' ({self.out_channels},), 'scalar' () or such a tuple, got {s!r}")

    def _shape(self, s) -> tuple:
        full = self._full_shape()
        if s == "full":
            return full
        if s == "filter":
            return self._filter_shape()
        if s == "scalar":
            return ()
        if isinstance(s, (tuple, list)) and all(isinstance(v, int) for v in s):
            try:
                broadcast_shapes(tuple(s), full)
            except RuntimeError:
                raise ValueError(f"shape {tuple(s)} does not broadcast to the weight shape {full}") from None
            return tuple(s)
        raise ValueError(f"shapes entries are 'full', 'filter', 'scalar' or a tuple, got {s!r}")

    @property
    def fan_in(self) -> int:
        return self.in_channels // self.groups * math.prod(self.kernel_size)

    def reset_parameters(self) -> None:
        # what nn.ConvNd's kaiming_uniform_(a=sqrt(5)) gives. With no taps per output (fan_in 0) the
        # parameters are never read (the output is empty, or the forward raises): zeros, where
        # nn.ConvNd leaves its bias uninitialized memory
        bound = 1.0 / math.sqrt(self.fan_in) if self.fan_in else 0.0
        with torch.no_grad():
            for n in self.weight_names:
                p, how = getattr(self, n), self.init.get(n, "kaiming_uniform")
                if callable(how):
                    out = how(p)
                    if isinstance(out, torch.Tensor) and out is not p:
                        p.copy_(out)
                elif isinstance(how, Number) and not isinstance(how, bool):
                    p.fill_(float(how))
                elif how == "kaiming_uniform":
                    _uniform(p, bound)
                elif how == "zeros":
                    p.zero_()
                elif how == "ones":
                    p.fill_(1.0)
                elif how == "normal":
                    p.normal_()
                elif how == "uniform":
                    p.uniform_()
                else:
                    raise ValueError(f"init for {n!r} must be one of {', '.join(INITS)}, a number or a callable, "
                                     f"got {how!r}")
            if self.bias is not None:
                _uniform(self.bias, bound)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # Straight from _parameters (where torch.func.functional_call swaps its tensors too):
        # nn.Module.__getattr__ is a Python call per name. getattr for what is not there (a
        # parametrization turns the weight into a property; a weight set to None keeps None).
        params, weights = self._parameters, {}
        for n in self.weight_names:
            w = params.get(n)
            weights[n] = getattr(self, n) if w is None else w
        bias = params.get("bias")
        return F.convnd(self._dims, input, self.op, weights, getattr(self, "bias") if bias is None else bias,
                        self.stride, self.padding, self.dilation, self.groups, self.reduce, self.padding_mode,
                        self.backend, self.grad, self.post)

    def explain(self, input=None):
        """The plan this layer runs with (see lambdaconv.explain); with an input, also the backend,
        kernels and cost of calling the layer on it."""
        if input is None:
            return explain(self.op, self.reduce, grad=self.grad, post=self.post)
        weights = {n: getattr(self, n) for n in self.weight_names}
        return explain(self.op, self.reduce, input=input, weights=weights, bias=self.bias, stride=self.stride,
                       padding=self.padding, dilation=self.dilation, groups=self.groups,
                       padding_mode=self.padding_mode, backend=self.backend, dims=self._dims, grad=self.grad,
                       post=self.post)

    def extra_repr(self) -> str:
        op = self.op if isinstance(self.op, (str, dict)) else str(resolve_op(self.op).expr)
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"op={op!r}, reduce={self.reduce!r}")
        if self.padding not in ((0,) * self._dims, "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.grad:
            s += f", grad={self.grad!r}"
        if self.post is not None:
            s += f", post={self.post!r}"
        return s


def _uniform(p, bound: float) -> None:
    if bound:
        p.uniform_(-bound, bound)
    else:  # U(-0, 0) would write -0.0
        p.zero_()


@lru_cache(maxsize=None)
def _plain():
    # the global RNG restored: initialising it must not shift a seeded script's weights
    with torch.random.fork_rng(devices=[]):
        return type("_Plain", (Conv1d,), {"_check_names": False})(1, 1, 1, op="linear")


def _names() -> tuple:
    """(every attribute name of a plain layer but its weight, every attribute of a plain nn.Module).
    dir() on every call, not cached: nn.Module gains attributes at run time (torch.compile adds some)."""
    plain = _plain()
    return frozenset(dir(plain)) - frozenset(plain.weight_names), frozenset(dir(nn.Module()))


def reserved_names() -> frozenset:
    """The names an op weight cannot take in a layer, because the layer already has an attribute of
    that name: its arguments (bias, stride, padding, groups, op, reduce, ...), its methods, and
    nn.Module's own (training, forward, to, ...). Read from a plain layer, so never out of date."""
    return _names()[0]


def _check_weight_names(names, cls) -> None:
    reserved, module = _names()
    clash = [n for n in names if n in reserved or hasattr(cls, n)]  # hasattr: a user's subclass's methods
    if clash:
        own = sorted(n for n in reserved - module if not n.startswith("_"))
        raise ValueError(
            f"op weight name{'s' if len(clash) > 1 else ''} {', '.join(map(repr, clash))} would clash with the "
            f"layer's attribute{'s' if len(clash) > 1 else ''} of that name: rename the op's parameter. A layer's "
            f"weights cannot be named {', '.join(own)}, nor like an attribute or method of nn.Module "
            f"(training, forward, to, eval, half, ...; all in lambdaconv.nn.reserved_names())")


class Conv1d(_ConvNd):
    """1-d lambdaconv layer; arguments as nn.Conv1d plus op, reduce, init, shapes, backend."""
    _dims = 1


class Conv2d(_ConvNd):
    """2-d lambdaconv layer; arguments as nn.Conv2d plus op, reduce, init, shapes, backend.

    >>> import torch, lambdaconv as lc
    >>> layer = lc.Conv2d(3, 8, 3, padding=1, op=lambda x, A, B: A * (x - B))
    >>> layer(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    """
    _dims = 2


class Conv3d(_ConvNd):
    """3-d lambdaconv layer; arguments as nn.Conv3d plus op, reduce, init, shapes, backend."""
    _dims = 3


class _ConvTransposeNd(_ConvNd):
    """A transposed lambdaconv layer (lambdaconv.transpose): weights (in_channels, out_channels/groups, *k)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, *, op, reduce=None, init=None,
                 shapes=None, backend="auto", grad=None):
        if padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported for transposed layers (as in torch), "
                             f"got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int or a tuple for a transposed layer, got {padding!r}")
        if terms.is_terms(op, reduce, None):
            raise NotImplementedError("op terms and two-level reductions are not implemented for transposed layers")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                         device, dtype, op=op, reduce=reduce, init=init, shapes=shapes, backend=backend, grad=grad)
        self.output_padding = _tuple(output_padding, self._dims, "output_padding")

    def _full_shape(self) -> tuple:
        return (self.in_channels, self.out_channels // self.groups) + self.kernel_size

    def _filter_shape(self) -> tuple:  # one value per output channel of a group
        return (1, self.out_channels // self.groups) + (1,) * self._dims

    @property
    def fan_in(self) -> int:  # as nn.ConvTransposeNd's init reads it: weight.size(1) * kernel taps
        return self.out_channels // self.groups * math.prod(self.kernel_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        from .transpose import conv_transpose_nd
        weights = {n: getattr(self, n) for n in self.weight_names}
        return conv_transpose_nd(self._dims, input, self.op, weights, self.bias, self.stride, self.padding,
                                 self.output_padding, self.groups, self.dilation, self.reduce, self.backend, self.grad)

    def explain(self, input=None):
        """The plan of this layer's op (see lambdaconv.explain); with an input, also the backend, kernels
        and cost of calling the layer on it."""
        if input is None:
            return explain(self.op, self.reduce, grad=self.grad)
        from .transpose import explain_transpose
        weights = {n: getattr(self, n) for n in self.weight_names}
        return explain_transpose(self._dims, input, self.op, weights, self.bias, self.stride, self.padding,
                                 self.output_padding, self.groups, self.dilation, self.reduce, self.backend, self.grad)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.output_padding != (0,) * self._dims:
            s += f", output_padding={self.output_padding}"
        return s


class ConvTranspose1d(_ConvTransposeNd):
    """1-d transposed lambdaconv layer; arguments as nn.ConvTranspose1d plus op, reduce, init, shapes, backend, grad."""
    _dims = 1


class ConvTranspose2d(_ConvTransposeNd):
    """2-d transposed lambdaconv layer; arguments as nn.ConvTranspose2d plus op, reduce, init, shapes, backend, grad.

    >>> import torch, lambdaconv as lc
    >>> up = lc.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, op="adder")
    >>> up(torch.randn(2, 8, 7, 7)).shape
    torch.Size([2, 4, 14, 14])
    """
    _dims = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-d transposed lambdaconv layer; arguments as nn.ConvTranspose3d plus op, reduce, init, shapes, backend, grad."""
    _dims = 3
