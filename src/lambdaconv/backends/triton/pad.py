"""Zero padding of the input in one kernel, for the Gluon kernels that read a padded input.

F.pad(x, pad) (aten.constant_pad_nd) fills the whole padded tensor with zeros, then copies x into
its interior: two kernels, the padded size written twice. This kernel writes each padded element
once (x's value or 0): at N16 C64 56x56 pad 1 it moves 26.6 MB instead of 40 MB, in one launch
(through launch.py's fast path) instead of two plus the narrow / copy_ dispatches around them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...geometry import Geometry, pad_input
from .launch import launch
from ...settings import interpreting


@triton.jit
def _pad_zeros(
    x_ptr,  # input (planes, ID, IH, IW), contiguous (planes = N * C)
    y_ptr,  # out (planes, OD, OH, OW), contiguous: x at [PD:, PH:, PW:], 0 elsewhere
    n_out,  # planes * OD * OH * OW
    ID: tl.constexpr, IH: tl.constexpr, IW: tl.constexpr,  # input spatial size (1 for missing dims)
    OD: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,  # padded spatial size
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,  # leading pads
    BLOCK: tl.constexpr,  # elements per program
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n_out
    w = offs % OW - PW
    t = offs // OW
    h = t % OH - PH
    t = t // OH
    d = t % OD - PD
    plane = t // OD
    inside = m & (w >= 0) & (w < IW) & (h >= 0) & (h < IH) & (d >= 0) & (d < ID)
    v = tl.load(x_ptr + (((plane * ID + d) * IH + h) * IW + w), mask=inside, other=0.0)
    tl.store(y_ptr + offs, v, mask=m)


def _as3(v: tuple, fill: int) -> tuple:
    return (fill,) * (3 - len(v)) + tuple(v)


def padded(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """pad_input(x, g), contiguous; "zeros" / "ignore" padding of a contiguous CUDA tensor by the
    kernel above, every other case by torch."""
    if g.padding_mode not in ("zeros", "ignore") or not x.is_cuda or not x.is_contiguous() \
            or all(lo == 0 and hi == 0 for lo, hi in g.pad) or interpreting():
        return pad_input(x, g).contiguous()
    return pad_zeros(x, g)


def pad_zeros(x: torch.Tensor, g: Geometry) -> torch.Tensor:
    """x (N, C, *spatial), contiguous, zero-padded by g.pad with the kernel above (CUDA, or CPU
    tensors under TRITON_INTERPRET=1)."""
    size = g.padded_size
    y = x.new_empty(tuple(x.shape[:2]) + size)
    n = y.numel()
    if n:
        (idd, ih, iw), (od, oh, ow) = _as3(g.in_size, 1), _as3(size, 1)
        pd, ph, pw = _as3(tuple(lo for lo, _ in g.pad), 0)
        block = 1024
        args = (x, y, n)
        kw = dict(ID=idd, IH=ih, IW=iw, OD=od, OH=oh, OW=ow, PD=pd, PH=ph, PW=pw, BLOCK=block, num_warps=4)
        grid = (triton.cdiv(n, block),)
        if interpreting():
            _pad_zeros[grid](*args, **kw)
        else:
            launch(_pad_zeros, grid, args, kw)
    return y
