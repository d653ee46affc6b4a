"""The decompose backend's offset layer on CUDA: its fused triton kernels (backends/triton/affine.py)
against the float64 reference and against the torch-op path, fp32 (TF32 off), fp16 and bf16
autocast, every subset of gradients, and under CUDA-graph capture. Skipped without CUDA."""
import pytest
import torch

import lambdaconv as lc

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("triton")

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(dtype, bias, o=6, c=4, groups=2):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, c, 9, 9, device="cuda", generator=g).to(dtype).requires_grad_()
    ws = {n: (torch.randn(o, c // groups, 3, 3, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
          for n in ("A", "B")}
    b = torch.randn(o, device="cuda", generator=g).to(dtype).requires_grad_() if bias else None
    return x, ws, b


def _run(x, ws, b, wanted, autocast=None, **kw):
    with torch.autocast("cuda", dtype=autocast, enabled=autocast is not None):
        y = lc.conv2d(x, "offset", ws, b, **kw)
    return y, torch.autograd.grad(y.float().square().sum(), wanted)


@pytest.mark.parametrize("mode", [(torch.float32, None), (torch.float16, None), (torch.float32, torch.bfloat16)],
                         ids=["fp32", "fp16", "bf16-autocast"])
@pytest.mark.parametrize("bias", [True, False])
def test_offset_fused_matches(monkeypatch, mode, bias):
    from lambdaconv.backends.triton import affine

    dtype, ac = mode
    used = []
    for name in ("constant", "grads"):
        real = getattr(affine, name)
        monkeypatch.setattr(affine, name, lambda *a, _f=real, _n=name: used.append(_n) or _f(*a))
    x, ws, b = _inputs(dtype, bias)
    kw = dict(padding=1, groups=2, stride=(1, 2))
    every = [x, ws["A"], ws["B"]] + ([b] if bias else [])
    ref = [t.detach().double().cpu().requires_grad_() for t in every]
    yr, gr = _run(ref[0], {"A": ref[1], "B": ref[2]}, ref[3] if bias else None, ref, backend="reference", **kw)
    y, g = _run(x, ws, b, every, autocast=ac, **kw)
    assert used == ["constant", "grads"]
    tol = TOL[ac or dtype]
    assert y.dtype == (ac or dtype)
    for a, r in zip([y, *g], [yr, *gr]):
        assert rel(a, r) < tol
    for wanted in ([x], [ws["A"]], [ws["B"]], every):
        y, got = _run(x, ws, b, wanted, autocast=ac, **kw)
        monkeypatch.setenv("LAMBDACONV_DECOMPOSE_FUSED", "0")
        y0, want = _run(x, ws, b, wanted, autocast=ac, **kw)
        monkeypatch.delenv("LAMBDACONV_DECOMPOSE_FUSED")
        assert rel(y, y0) < 1e-6
        for a, r in zip(got, want):
            assert a.dtype == r.dtype and a.shape == r.shape and rel(a, r) < 1e-5


def test_offset_module_uses_fused_kernels(monkeypatch):
    """nn.Parameter weights (the layer's) take the fused kernels too, and match the torch-op path."""
    from lambdaconv.backends.triton import affine

    used = []
    real = affine.grads
    monkeypatch.setattr(affine, "grads", lambda *a: used.append(1) or real(*a))
    torch.manual_seed(0)
    layer = lc.Conv2d(4, 6, 3, padding=1, op="offset").cuda()
    x = torch.randn(2, 4, 8, 8, device="cuda")
    params = list(layer.parameters())
    y = layer(x)
    got = torch.autograd.grad(y.square().sum(), params)
    assert used == [1]
    monkeypatch.setenv("LAMBDACONV_DECOMPOSE_FUSED", "0")
    y0 = layer(x)
    want = torch.autograd.grad(y0.square().sum(), params)
    assert used == [1] and rel(y, y0) < 1e-6
    for a, r in zip(got, want):
        assert rel(a, r) < 1e-5


def test_offset_fused_graph_capture():
    """The fused kernels inside a captured CUDA graph replay to the eager results."""
    base = [t.detach() for t in (lambda x, ws, b: (x, ws["A"], ws["B"], b))(*_inputs(torch.float32, True))]

    def step():
        # leaves made per call, on the stream of the call: a leaf kept from an eager call would tie
        # its gradient accumulator to the legacy stream, which capture forbids
        x, A, B, b = every = [t.requires_grad_() for t in (u.detach() for u in base)]
        y = lc.conv2d(x, "offset", {"A": A, "B": B}, b, padding=1, groups=2)
        return (y, *torch.autograd.grad(y.square().sum(), every))

    eager = step()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, r in zip(out, eager):
        assert torch.allclose(a, r, rtol=1e-6, atol=1e-6)
