"""Two fixed kernels for the decompose backend's offset-type layers (A*(x - B) and its kin) on CUDA.

Such a layer is y = conv(x, P) + c with c = bias + alpha * sum_taps(P * Q) per filter. With torch
ops that costs, besides the convolutions nn.Conv2d runs too, a baddbmm for c (a copy of the bias
and a cuBLAS gemv: two kernels), a cast of c under autocast, and in the backward a cast of the
bias gradient and one multiply per weight: 5 small kernels around a conv whose whole fwd+bwd is 20
kernels (H100, session 4 profile). Here c is one kernel that writes it in the conv's dtype, and
every gradient after the conv's own backward is one kernel: 2 small kernels. The arithmetic is the
same (float32 products and sums of the stored values), so the results agree with the torch ops'
to rounding; decompose.py uses the torch ops where these do not apply (CPU, tracing, fp64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import launch
from .tuning import interpreting


@triton.jit
def _affine_const(
    p_ptr,  # P as (O, K) contiguous (K = in_channels/groups x taps), any float dtype
    q_ptr,  # Q as (O, K) contiguous, any float dtype
    bias_ptr,  # (O,), read only when HAS_BIAS
    c_ptr,  # out (O,): bias + alpha * sum_k P*Q, in the conv's dtype (the cast fused)
    K,  # taps per filter
    alpha,  # the constant's scale (-1 for A*(x - B))
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,  # K elements per loop step
):
    o = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], tl.float32)
    for k0 in range(0, K, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        m = offs < K
        p = tl.load(p_ptr + o * K + offs, mask=m, other=0.0).to(tl.float32)
        q = tl.load(q_ptr + o * K + offs, mask=m, other=0.0).to(tl.float32)
        acc += p * q
    c = tl.sum(acc, 0) * alpha
    if HAS_BIAS:
        c = tl.load(bias_ptr + o).to(tl.float32) + c
    tl.store(c_ptr + o, c.to(c_ptr.dtype.element_ty))


@triton.jit
def _affine_grad(
    gpc_ptr,  # the conv's weight gradient (O, K), any float dtype; read when NEED_P
    gb_ptr,  # the conv's bias gradient (O,), any float dtype: d loss / d c
    p_ptr,  # P (O, K), read when NEED_Q
    q_ptr,  # Q (O, K), read when NEED_P
    gp_ptr,  # out (O, K): gPc + alpha * gb * Q, in P's gradient dtype
    gq_ptr,  # out (O, K): alpha * gb * P, in Q's gradient dtype
    gbo_ptr,  # out (O,): gb in the bias's dtype, written by the first column block when NEED_B
    K,  # taps per filter
    alpha,  # the constant's scale
    NEED_P: tl.constexpr, NEED_Q: tl.constexpr, NEED_B: tl.constexpr,
    BLOCK: tl.constexpr,  # K elements per program
):
    o = tl.program_id(0).to(tl.int64)
    kb = tl.program_id(1)
    gb = tl.load(gb_ptr + o).to(tl.float32)
    s = gb * alpha
    offs = kb * BLOCK + tl.arange(0, BLOCK)
    m = offs < K
    if NEED_P:
        gpc = tl.load(gpc_ptr + o * K + offs, mask=m, other=0.0).to(tl.float32)
        q = tl.load(q_ptr + o * K + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(gp_ptr + o * K + offs, (gpc + s * q).to(gp_ptr.dtype.element_ty), mask=m)
    if NEED_Q:
        p = tl.load(p_ptr + o * K + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(gq_ptr + o * K + offs, (s * p).to(gq_ptr.dtype.element_ty), mask=m)
    if NEED_B:
        if kb == 0:
            tl.store(gbo_ptr + o, gb.to(gbo_ptr.dtype.element_ty))


def _go(fn, grid, args, kw):
    if interpreting():  # CPU tensors (tests): the plain launch; the fast one reads the CUDA stream
        fn[grid](*args, **kw)
    else:
        launch(fn, grid, args, kw)


def _block(k: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(k)))


_KW: dict = {}  # launch constants per (kernel, sizes, flags): built once (host time per call)


def _kw(key, make):
    hit = _KW.get(key)
    if hit is None:
        hit = _KW[key] = make()
    return hit


def constant(P: torch.Tensor, Q: torch.Tensor, bias, alpha: float, dtype) -> torch.Tensor:
    """bias + alpha * sum over each filter's taps of P*Q, shape (O,), in `dtype`. P, Q: full-size
    (O, Cg, *kernel) contiguous tensors; bias (O,) or None."""
    o = P.shape[0]
    k = P.numel() // o if o else 0
    c = torch.empty(o, dtype=dtype, device=P.device)
    if o:
        has_bias = bias is not None
        grid, kw = _kw(("c", o, k, has_bias), lambda: ((o,), dict(HAS_BIAS=has_bias, BLOCK=_block(k, 1024),
                                                                    num_warps=4)))
        _go(_affine_const, grid, (P, Q, bias if has_bias else c, c, k, float(alpha)), kw)
    return c


def grads(gPc, gb, P, Q, alpha: float, dtypes: tuple):
    """(gP, gQ, gbias) of the layer from the conv's gradients gPc (None: not needed) and gb; dtypes =
    (P's, Q's, the bias's gradient dtype), None where that gradient is not wanted."""
    pdt, qdt, bdt = dtypes
    o = P.shape[0]
    k = P.numel() // o if o else 0
    gP = None if pdt is None else torch.empty(P.shape, dtype=pdt, device=P.device)
    gQ = None if qdt is None else torch.empty(Q.shape, dtype=qdt, device=Q.device)
    gB = None if bdt is None else torch.empty(o, dtype=bdt, device=P.device)
    if o and k:
        flags = (gP is not None, gQ is not None, gB is not None)
        grid, kw = _kw(("g", o, k, flags), lambda: (
            (o, triton.cdiv(k, _block(k, 1024))),
            dict(NEED_P=flags[0], NEED_Q=flags[1], NEED_B=flags[2], BLOCK=_block(k, 1024), num_warps=4)))
        dummy = gb
        _go(_affine_grad, grid,
            (dummy if gPc is None else gPc, gb, P, Q, dummy if gP is None else gP, dummy if gQ is None else gQ,
             dummy if gB is None else gB, k, float(alpha)), kw)
    elif gB is not None:
        gB.copy_(gb)
    return gP, gQ, gB
