"""Convolution geometry shared by every backend: argument normalization, padding, windows.

`Geometry` is plain data (einops-style recipe): built once per call from the user's arguments,
validated before any kernel runs, printable for debugging.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PADDING_MODES = ("zeros", "reflect", "replicate", "circular", "ignore")


@dataclass(frozen=True)
class Geometry:
    dims: int  # number of spatial dimensions (1, 2, 3)
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple  # spatial size of the input before padding
    kernel: tuple
    stride: tuple
    dilation: tuple
    pad: tuple  # ((lo, hi), ...) per spatial dim
    padding_mode: str
    out_size: tuple
    # transposed convolutions (transpose.py): the input is zero-inserted, and only positions u with
    # (u + offset) % step == 0 per dim hold a real value, ((step, offset), ...); () for none
    holes: tuple = ()

    @property
    def cin_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def cout_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def taps(self) -> int:
        """Kernel offsets per window (K); a window holds cin_per_group * taps terms."""
        return math.prod(self.kernel)

    @property
    def positions(self) -> int:
        return math.prod(self.out_size)

    @property
    def padded_size(self) -> tuple:
        return tuple(s + lo + hi for s, (lo, hi) in zip(self.in_size, self.pad))


def broadcast_shapes(*shapes) -> torch.Size:
    """torch.broadcast_shapes, cached for shapes of plain ints: torch's goes through its symbolic-
    shape reference implementation, ~20 us a call, and a call of a layer with terms needs several.
    Symbolic sizes (torch.compile) go to torch's."""
    key = tuple((s,) if isinstance(s, int) else tuple(s) for s in shapes)
    if all(type(d) is int for s in key for d in s):
        return _broadcast(key)
    return torch.broadcast_shapes(*shapes)


@functools.lru_cache(maxsize=1024)
def _broadcast(key: tuple) -> torch.Size:
    return torch.broadcast_shapes(*key)


def _tuple(v, d: int, name: str) -> tuple:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an int or a tuple of {d} ints, got {v!r}")
    if isinstance(v, int):
        return (v,) * d
    if isinstance(v, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        if len(v) == 1:
            return tuple(v) * d
        if len(v) == d:
            return tuple(v)
        raise ValueError(f"{name} must have {d} entries for a {d}d convolution, got {tuple(v)}")
    raise TypeError(f"{name} must be an int or a tuple of {d} ints, got {v!r}")


def make_geometry(d, x_shape, w_shape, stride, padding, dilation, groups, padding_mode) -> Geometry:
    """Validate the conv arguments against the input and broadcast weight shapes (ValueError)."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}; expected one of {', '.join(PADDING_MODES)}")
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be positive, got {groups}")
    stride = _tuple(stride, d, "stride")
    dilation = _tuple(dilation, d, "dilation")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride and dilation must be positive, got stride={stride}, dilation={dilation}")
    n, c = x_shape[0], x_shape[1]
    in_size = tuple(x_shape[2:])
    o, cw = w_shape[0], w_shape[1]
    kernel = tuple(w_shape[2:])
    # torch's convolutions fail inside their backend on these (oneDNN / cuDNN errors); only the
    # batch and the input channels may be empty (zero input channels: an empty output, as torch's)
    if o == 0:
        raise ValueError(f"the weights' broadcast shape {tuple(w_shape)} gives out_channels = 0; "
                         f"a convolution needs at least one output channel")
    if 0 in kernel:
        raise ValueError(f"kernel size {kernel} (the weights' broadcast shape {tuple(w_shape)}) has a zero-size "
                         f"dim; every kernel dim must be at least 1")
    if 0 in in_size and n and c:  # torch allows it where the output is empty anyway
        raise ValueError(f"the input's spatial size {in_size} has a zero-size dim; only an input with an empty "
                         f"batch or zero channels may (as in torch)")
    if c % groups:
        raise ValueError(f"groups={groups} does not divide the input's {c} channels")
    if o % groups:
        raise ValueError(f"groups={groups} does not divide out_channels={o}")
    if cw not in (1, c // groups):
        raise ValueError(
            f"channels mismatch: the weights expect {cw * groups} input channels ({cw} per group x {groups} "
            f"groups) but the input has {c} channels"
        )
    if isinstance(padding, str):
        if padding == "valid":
            pad = ((0, 0),) * d
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' is not supported for strided convolutions (as in torch)")
            total = [dl * (k - 1) for dl, k in zip(dilation, kernel)]
            pad = tuple((t // 2, t - t // 2) for t in total)
        else:
            raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    else:
        p = _tuple(padding, d, "padding")
        if min(p) < 0:
            raise ValueError(f"padding must be non-negative, got {p}")
        pad = tuple((v, v) for v in p)
    if padding_mode == "reflect" and any(max(lh) >= s for lh, s in zip(pad, in_size)):
        raise ValueError(f"reflect padding {pad} must be smaller than the input size {in_size}")
    if padding_mode == "circular" and any(max(lh) > s for lh, s in zip(pad, in_size)):
        raise ValueError(f"circular padding {pad} must not exceed the input size {in_size}")
    out_size = []
    for s, (lo, hi), k, st, dl in zip(in_size, pad, kernel, stride, dilation):
        extent = dl * (k - 1) + 1
        if s + lo + hi < extent:
            raise ValueError(
                f"kernel size {kernel} (dilation {dilation}) is larger than the padded input "
                f"{tuple(a + b + e for a, (b, e) in zip(in_size, pad))}"
            )
        out_size.append((s + lo + hi - extent) // st + 1)
    return Geometry(d, n, c, o, groups, in_size, kernel, stride, dilation, pad, padding_mode, tuple(out_size))


def pad_input(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """x padded by g.pad; "zeros" and "ignore" fill with 0 ("ignore" masks those taps out later)."""
    if all(lo == 0 and hi == 0 for lo, hi in g.pad):
        return x
    flat = [v for lh in reversed(g.pad) for v in lh]  # F.pad takes the last dim first
    if g.padding_mode in ("zeros", "ignore"):
        return F.pad(x, flat)
    return F.pad(x, flat, mode=g.padding_mode)


def windows(xp: torch.Tensor, g: Geometry) -> torch.Tensor:
    """A strided view (N, C, *out, *kernel) of the padded input: element [n, c, p, k] is the value at
    tap k of output position p. No copy: each dim is unfolded over its dilated extent, then strided."""
    v = xp
    for i in range(g.dims):
        k, st, dl = g.kernel[i], g.stride[i], g.dilation[i]
        v = v.unfold(2 + i, dl * (k - 1) + 1, st)  # appends a window dim of the dilated extent
        if dl > 1:
            v = v[..., ::dl]
    return v  # (N, C, *out, *kernel)


def real_positions(g: Geometry, device) -> torch.Tensor:
    """Float (1, 1, *padded): 1 where the padded input holds a real value (not padding, not an
    inserted zero of a transposed conv), 0 elsewhere."""
    ones = torch.ones((1, 1) + g.in_size, device=device)
    for i, (step, off) in enumerate(g.holes):  # inserted zeros are no taps
        real = (torch.arange(g.in_size[i], device=device) + off) % step == 0
        ones = ones * real.reshape((-1,) + (1,) * (g.dims - 1 - i)).to(ones.dtype)
    return pad_input(ones, Geometry(**{**g.__dict__, "padding_mode": "zeros"}))


def valid_taps(g: Geometry, device) -> torch.Tensor:
    """Bool (K, P): tap k of output position p reads a real (unpadded, not inserted) input element."""
    return windows(real_positions(g, device), g).reshape(g.positions, g.taps).t().bool()
