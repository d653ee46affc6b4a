"""The decompose backend's offset layer on CUDA (conv(x, A, bias - sum_taps(A*B)) as aten ops, or the
general path for half inputs) against the float64 reference, fp32 (TF32 off), fp16 and bf16
autocast, every subset of gradients, and under CUDA-graph capture. Skipped without CUDA."""
import pytest
import torch

import lambdaconv as lc
from lambdaconv.bench.timing import cuda_graph

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

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
def test_offset_matches(mode, bias):
    dtype, ac = mode
    x, ws, b = _inputs(dtype, bias)
    kw = dict(padding=1, groups=2, stride=(1, 2))
    every = [x, ws["A"], ws["B"]] + ([b] if bias else [])
    ref = [t.detach().double().cpu().requires_grad_() for t in every]
    yr, gr = _run(ref[0], {"A": ref[1], "B": ref[2]}, ref[3] if bias else None, ref, backend="reference", **kw)
    y, g = _run(x, ws, b, every, autocast=ac, **kw)
    tol = TOL[ac or dtype]
    assert y.dtype == (ac or dtype)
    for a, r in zip([y, *g], [yr, *gr]):
        assert rel(a, r) < tol
    for i in range(3):  # gradients only where asked (x, A, B alone)
        _, (got,) = _run(x, ws, b, [every[i]], autocast=ac, **kw)
        assert got.dtype == every[i].dtype and rel(got, gr[i]) < tol


def test_offset_module_is_one_conv():
    """The layer's output is the native conv's (ConvolutionBackward0), parameters get float32 grads."""
    torch.manual_seed(0)
    layer = lc.Conv2d(4, 6, 3, padding=1, op="offset").cuda()
    x = torch.randn(2, 4, 8, 8, device="cuda")
    y = layer(x)
    assert y.grad_fn.name() == "ConvolutionBackward0"
    ws = {n: getattr(layer, n).detach().double().cpu() for n in ("A", "B")}
    yr = lc.conv2d(x.double().cpu(), "offset", ws, layer.bias.detach().double().cpu(), padding=1, backend="reference")
    assert rel(y, yr) < 1e-5


def test_offset_graph_capture():
    """The offset layer inside a captured CUDA graph replays to the eager results."""
    base = [t.detach() for t in (lambda x, ws, b: (x, ws["A"], ws["B"], b))(*_inputs(torch.float32, True))]

    def step():
        # leaves made per call, on the stream of the call: a leaf kept from an eager call would tie
        # its gradient accumulator to the legacy stream, which capture forbids
        x, A, B, b = every = [t.requires_grad_() for t in (u.detach() for u in base)]
        y = lc.conv2d(x, "offset", {"A": A, "B": B}, b, padding=1, groups=2)
        return (y, *torch.autograd.grad(y.square().sum(), every))

    eager = step()
    graph, out = cuda_graph(step, warmup=2)
    graph.replay()
    torch.cuda.synchronize()
    for a, r in zip(out, eager):
        assert torch.allclose(a, r, rtol=1e-6, atol=1e-6)
