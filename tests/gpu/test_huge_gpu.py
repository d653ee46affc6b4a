"""Huge tensors and large grids through the triton backend on a GPU (issue 15, item 9).

An input (or output) of more than 2**31 elements needs 64-bit index arithmetic in the kernels
(before: CompilationError, and int32 offsets that would wrap); a batch above 65535, and grids whose
y / z pass 65535 (depthwise with groups x taps > 65535 in the weight gradients), must launch. The
huge cases are checked against the float64 reference on crops: the upstream gradient is zero
outside a small window at the tensor's end (where the offsets pass 2**31), so the gradients depend
only on a small crop of the input, which the reference computes; the gradient outside the crop
must be exactly zero. Every kernel variant (Gluon staged / register, portable) of a case must also
agree with the first on the whole tensor. Skipped without CUDA or with less than 60 GB free.
"""
import pytest
import torch

import lambdaconv as lc
from lambdaconv.backends.triton import function, tuning
from lambdaconv.geometry import make_geometry

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("triton")

TOL = 1e-4  # fp32, TF32 off (tests/gpu/test_triton_cuda.py)
WIN = 24  # the output window the upstream gradient is non-zero in (the last WIN x WIN positions)


@pytest.fixture(autouse=True)
def _settings(lc_settings, monkeypatch):
    lc_settings(tune=False)  # one config per kernel (variants forced below)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old
    torch.cuda.empty_cache()


def _free_gb():
    free, _ = torch.cuda.mem_get_info()
    return free / 2 ** 30


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _reference(xc, w, op, gyc):
    """Forward and gradients (x, w) of the crop xc in float64 on the CPU, padding 1."""
    xr = xc.detach().double().cpu().requires_grad_()
    wr = w.detach().double().cpu().requires_grad_()
    y = lc.conv2d(xr, op, {"weight": wr}, padding=1, backend="reference")
    gx, gw = torch.autograd.grad(y, [xr, wr], gyc.double().cpu())
    return y, gx, gw


def _run(x, w, op, gy):
    y = lc.conv2d(x, op, {"weight": w}, padding=1, backend="triton")
    gx, gw = torch.autograd.grad(y, [x, w], gy)
    torch.cuda.synchronize()
    return y.detach(), gx, gw


def _check_crops(x, w, op, gy, y, gx, gw, label):
    H, W = x.shape[-2:]
    # forward, top-left corner (small offsets) and bottom-right (past 2**31 for the huge input)
    yr, _, _ = _reference(x[..., :WIN + 1, :WIN + 1], w, op, torch.zeros(1, w.shape[0], WIN + 1, WIN + 1))
    assert rel(y[..., :WIN, :WIN], yr[..., :WIN, :WIN]) < TOL, label
    # the crop x[H-c:, W-c:] with c = WIN + 2: its outputs from row 1 on see their true neighbours
    # (row 0 sees zero padding where x has a row), and the upstream window starts at its row 2
    c = WIN + 2
    gyc = torch.zeros(1, w.shape[0], c, c, dtype=torch.float64)
    gyc[..., 2:, 2:] = gy[..., H - WIN:, W - WIN:].double().cpu()
    yr, gxr, gwr = _reference(x[..., H - c:, W - c:], w, op, gyc)
    errs = {"y": rel(y[..., H - WIN - 1:, W - WIN - 1:], yr[..., 1:, 1:]),
            "gx": rel(gx[..., H - c:, W - c:], gxr), "gw": rel(gw, gwr)}
    assert max(errs.values()) < TOL, (label, errs)
    # nothing written outside the crop: the whole gradient's mass is the crop's
    total = torch.linalg.vector_norm(gx, 1, dtype=torch.float64).item()
    crop = torch.linalg.vector_norm(gx[..., H - c:, W - c:], 1, dtype=torch.float64).item()
    assert abs(total - crop) <= 1e-6 * crop, (label, total, crop)


def _window_grad(shape, device):
    gy = torch.zeros(shape, device=device)
    gy[..., -WIN:, -WIN:] = torch.randn(shape[:2] + (WIN, WIN), device=device)
    return gy


ADDER = [{}, {"gluon": "0", "gluon_bwd": "0"}, {"gluon_fwd_config": "6", "gluon_bwd": "0", "triton_gw": "outer"}]
MAXPLUS = [{}, {"gluon": "0"}]


@pytest.mark.parametrize("op,variants", [("adder", ADDER), ("dilation", MAXPLUS)], ids=["adder", "max-plus"])
def test_input_past_2_31(op, variants, monkeypatch):
    """The issue's input: (1, 32, 8192, 8200) fp32, 2.15e9 elements, padding 1."""
    if _free_gb() < 60:
        pytest.skip("needs 60 GB of free GPU memory")
    torch.manual_seed(0)
    x = torch.randn(1, 32, 8192, 8200, device="cuda").requires_grad_()
    assert x.numel() > 2 ** 31
    w = (torch.randn(2, 32, 3, 3, device="cuda") * 0.5).requires_grad_()
    gy = _window_grad((1, 2, 8192, 8200), "cuda")
    first = None
    for env in variants:
        with lc.settings.override(**env):
            y, gx, gw = _run(x, w, op, gy)
        _check_crops(x, w, op, gy, y, gx, gw, f"{op} {env}")
        if first is None:
            first = (y, gx)
        else:  # another kernel: the same values on the whole tensor
            for a, r in zip((y, gx), first):
                assert ((a - r).norm() / r.norm()).item() < 1e-5, env
        del y, gx, gw
    if op == "dilation":  # inference: the max-plus forward without saved winners
        with torch.no_grad():
            y = lc.conv2d(x, op, {"weight": w}, padding=1, backend="triton")
        assert (y - first[0]).abs().max().item() == 0.0


def _huge_adder(seed, x_shape, w_shape, label):
    """Forward and backward of the adder at a huge size, checked on the crops."""
    if _free_gb() < 60:
        pytest.skip("needs 60 GB of free GPU memory")
    torch.manual_seed(seed)
    x = torch.randn(x_shape, device="cuda").requires_grad_()
    w = (torch.randn(w_shape, device="cuda") * 0.5).requires_grad_()
    gy = _window_grad((1, w_shape[0]) + x_shape[2:], "cuda")
    y, gx, gw = _run(x, w, "adder", gy)
    assert max(x.numel(), y.numel()) > 2 ** 31
    _check_crops(x, w, "adder", gy, y, gx, gw, label)


def test_output_past_2_31():
    """A small input and 32 out channels: the output (and its gradient) has 2.15e9 elements."""
    _huge_adder(1, (1, 2, 8192, 8200), (32, 2, 3, 3), "output")


def test_one_plane_past_2_31():
    """One channel of 46400 x 46400: positions themselves pass 2**31 (rows, n_rows as int64)."""
    _huge_adder(2, (1, 1, 46400, 46400), (1, 1, 3, 3), "plane")


def _check_full(x, ws, b, op, **kw):
    """Forward and every gradient against the float64 reference on the whole (small) tensors."""
    leaves = [x, *ws.values()] + ([b] if b is not None else [])
    ref = [t.detach().double().requires_grad_() for t in leaves]  # on the GPU: the CPU took minutes
    out = []
    for backend, lv in (("triton", leaves), ("reference", ref)):
        wd = dict(zip(ws, lv[1:1 + len(ws)]))
        y = lc.conv2d(lv[0], op, wd, lv[-1] if b is not None else None, backend=backend, **kw)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.device, y.dtype)
        out.append([y, *torch.autograd.grad(y, lv, gy)])
    for name, a, r in zip(["y", "gx"] + list(ws) + ["gb"], *out):
        assert rel(a, r) < TOL, (op, kw, name)


def _inputs(op, x_shape, w_shape):
    """x and the weight: normal for adder; for max-plus on the grids x in Z/16 and each filter's
    w distinct in (0, 1/16) on Z/4096, so that every tap value x + w is exact in fp32 and no two
    taps of a window tie (ties of the fp32 sums, not of the float64 reference's, move the gradient
    of millions of outputs to another tap: seen here at 7e-4)."""
    if op == "adder":
        return torch.randn(x_shape, device="cuda"), torch.randn(w_shape, device="cuda") * 0.5
    x = torch.randint(-1024, 1024, x_shape, device="cuda") / 16.0
    per = w_shape[1] * w_shape[2] * w_shape[3]
    w = torch.stack([torch.randperm(255, device="cuda")[:per] + 1 for _ in range(w_shape[0])]) / 4096.0
    return x, w.reshape(w_shape)


@pytest.mark.parametrize("op", ["adder", "dilation"])
def test_batch_above_65535(op):
    torch.manual_seed(4)
    x, w = _inputs(op, (70000, 4, 4, 4), (6, 4, 3, 3))
    b = torch.randn(6, device="cuda").requires_grad_()
    _check_full(x.requires_grad_(), {"weight": w.requires_grad_()}, b, op, padding=1)


@pytest.mark.parametrize("op", ["adder", "dilation"])
def test_grid_past_65535_is_folded(op):
    """groups x taps = 73728 (the weight gradients' grid y): launched folded into x."""
    torch.manual_seed(5)
    x, w = _inputs(op, (2, 16384, 6, 6), (8192, 2, 3, 3))
    x, ws = x.requires_grad_(), {"weight": w.requires_grad_()}
    k = function.consts(make_geometry(2, tuple(x.shape), tuple(ws["weight"].shape), 1, 1, 1, 8192, "zeros"), True)
    assert k["FOLD"] and not k["I64"]
    _check_full(x, ws, None, op, padding=1, groups=8192)
    assert tuning.GRID_YZ == 65535
