"""Two-level reductions on CUDA (the fused triton kernels of backends/triton/twolevel_kernel.py for
(max / min, sum / mean), the depthwise route for the other pairs) against the float64 definition of
tests/unfold_definition.py on the CPU, forward and every gradient, fp32 / fp16 / bf16. Skipped
without CUDA."""
import itertools
import sys
from pathlib import Path

import pytest
import torch

import lambdaconv as lc
from lambdaconv import reductions, twolevel
from lambdaconv.backends.triton import twolevel_kernel
from lambdaconv.ir import resolve_op

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from unfold_definition import definition  # noqa: E402
from test_two_level import GEO, GEOMETRIES, OPS  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("triton")

CONV = {1: lc.conv1d, 2: lc.conv2d, 3: lc.conv3d}
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
FUSED = [p for p in itertools.product(reductions.names(), repeat=2) if twolevel_kernel.applies(p)]


@pytest.fixture(autouse=True)
def _no_tf32(lc_settings):
    lc_settings(tune=False)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def rel(a, b):
    a, b = a.double().cpu(), b.double()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN pattern differs"
    a, b = torch.nan_to_num(a, posinf=0, neginf=0), torch.nan_to_num(b, posinf=0, neginf=0)
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(op, pair, geo, dtype=torch.float32, n=2, c=4, o=4, fused=True):
    d, size, k, stride, padding, dilation, groups, mode = geo
    g = torch.Generator().manual_seed(0)
    # distinct values a step apart: no ties among a channel's taps after rounding to half
    x = (torch.randperm(n * c * size ** d, generator=g).double() / 64).reshape((n, c) + (size,) * d)
    w = torch.randn((o, c // groups) + (k,) * d, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(o, generator=g, dtype=torch.float64)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode)
    leaves = [t.to("cuda", dtype).requires_grad_() for t in (x, w, b)]
    leaves_r = [t.detach().double().cpu().requires_grad_() for t in leaves]  # the same rounded inputs
    ref = definition(leaves_r[0], {"W": leaves_r[1]}, {"y": OPS[op]}, pair, None, (), leaves_r[2], **kw)
    assert twolevel.fused_triton(pair, resolve_op(op), leaves[0], "auto") == fused
    y = CONV[d](leaves[0], op, {"W": leaves[1]}, leaves[2], reduce=pair, **kw)
    assert y.dtype == dtype and y.device.type == "cuda"
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = [y, *torch.autograd.grad(y, leaves, gy.to("cuda", dtype))]
    want = [ref, *torch.autograd.grad(ref, leaves_r, gy.to(dtype).double())]
    for name, a, r in zip(("output", "grad x", "grad W", "grad bias"), got, want):
        err = rel(a, r)
        assert err < TOL[dtype], f"{op} {pair} {geo} {dtype}: {name} rel err {err:.2e}"


@pytest.mark.parametrize("pair", FUSED, ids="-".join)
@pytest.mark.parametrize("op", OPS)
def test_fused_pairs(op, pair):
    check(op, pair, GEO)


@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: f"{g[0]}d-s{g[3]}-p{g[4]}-d{g[5]}-g{g[6]}-{g[7]}")
def test_fused_geometries(geo):
    check("x + W", ("max", "sum"), geo)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pair", [("max", "sum"), ("min", "mean")], ids="-".join)
def test_fused_half(pair, dtype):
    check("x + W", pair, GEO, dtype=dtype)


def test_fused_several_tiles():
    """More rows, channels and filters than one program's tile: the per-tile atomic adds."""
    check("x + W", ("max", "sum"), (2, 23, 3, 1, 1, 1, 1, "zeros"), n=3, c=20, o=70)


@pytest.mark.parametrize("pair", [p for p in itertools.product(reductions.names(), repeat=2) if p not in FUSED][:4],
                         ids="-".join)
def test_depthwise_pairs(pair):
    check("x + W", pair, GEO, fused=False)
