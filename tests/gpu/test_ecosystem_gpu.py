"""The CUDA parts of the ecosystem issue: torch.compile (fullgraph, inductor) with decompose layers
and direct layers on the generated triton kernels, mode="reduce-overhead" (CUDA graphs), autocast
fp16 / bf16, torch.export on CUDA, deterministic mode. Skipped without CUDA; the CPU side is
tests/test_ecosystem.py.
"""
import os

import pytest
import torch
from torch import nn

import lambdaconv as lc
from lambdaconv.backends import registry
from lambdaconv.functional import prepare

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DIRECT = torch.ops.lambdaconv.direct_conv.default


@pytest.fixture(autouse=True)
def _setup(lc_settings, monkeypatch):
    lc_settings(tune=False)  # one config per kernel: fewer compiles
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def model(seed=0):
    """decompose, direct max ("ignore" padding), direct sum (stride 2, groups), decompose preset."""
    torch.manual_seed(seed)
    return nn.Sequential(
        lc.Conv2d(3, 8, 3, padding=1, op=lambda x, A, B: A * (x - B)),
        lc.Conv2d(8, 8, 3, padding=1, op="-abs(x-W)", reduce="max", padding_mode="ignore"),
        lc.Conv2d(8, 8, 3, stride=2, groups=2, op="adder"),
        nn.ReLU(),
        lc.Conv2d(8, 4, 1, op="linear"),
    ).cuda()


def grads(m, x, seed=1):
    m.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    y = m(x)
    gy = torch.randn(y.shape, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda")
    (y * gy).sum().backward()
    return [y.detach().clone(), x.grad.clone()] + [p.grad.clone() for p in m.parameters()]


def assert_close(got, want, rtol=1e-4):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item(), msg=f"tensor {i}")


def test_direct_layers_run_triton_on_cuda():
    pytest.importorskip("triton")
    x, w = torch.randn(2, 8, 9, 9, device="cuda"), torch.randn(8, 8, 3, 3, device="cuda")
    call = prepare(2, x, "-abs(x-W)", {"W": w}, None, 1, 1, 1, 1, "max", "ignore", "auto")[3]
    assert registry.select("auto", call).name == "triton"


def test_compile_fullgraph_inductor_cuda():
    m = model()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    want = grads(m, x)
    cm = torch.compile(m, fullgraph=True)
    assert_close(grads(cm, x), want)
    xl = x.to(memory_format=torch.channels_last)
    assert_close(grads(cm, xl), grads(m, xl))


def test_compile_reduce_overhead_cuda_graphs():
    m = model()
    cm = torch.compile(m, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(4, 3, 16, 16, device="cuda")
    want = grads(m, x)
    for _ in range(3):  # warm-up runs, then recorded and replayed graphs
        torch.compiler.cudagraph_mark_step_begin()
        got = grads(cm, x)
    assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op,reduce", [("offset", None), ("-abs(x-W)", "max"), ("adder", None)])
def test_autocast_cuda_as_nn_conv2d(dtype, op, reduce):
    torch.manual_seed(0)
    layer = lc.Conv2d(8, 8, 3, padding=1, op=op, reduce=reduce).cuda()
    x = torch.randn(2, 8, 12, 12, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        want_dtype = nn.Conv2d(8, 8, 3).cuda()(x).dtype
        y = layer(x)
        yc = torch.compile(layer, fullgraph=True)(x)
    assert y.dtype == yc.dtype == want_dtype == dtype
    ref = layer(x)
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    for out in (y, yc):
        torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())
    y.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_export_on_cuda():
    torch.manual_seed(0)
    dec = nn.Sequential(lc.Conv2d(3, 4, 3, padding=1, op="offset"),
                        lc.Conv2d(4, 4, 3, padding=1, op="quadratic")).cuda()
    x = torch.randn(2, 3, 10, 10, device="cuda")
    ep = torch.export.export(dec, (x,))
    assert all(n.target.namespace == "aten" for n in ep.graph.nodes if n.op == "call_function")
    torch.testing.assert_close(ep.module()(x), dec(x))
    m = model()
    ep = torch.export.export(m, (x,))
    assert sum(n.target == DIRECT for n in ep.graph.nodes) == 2
    torch.testing.assert_close(ep.module()(x), m(x), rtol=1e-4, atol=1e-4)


def test_deterministic_mode_cuda(monkeypatch):
    # cuBLAS needs a fixed workspace to be deterministic; torch raises without it (a clear error)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"))
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        x, w = torch.randn(2, 8, 9, 9, device="cuda"), torch.randn(8, 8, 3, 3, device="cuda")
        call = prepare(2, x, "-abs(x-W)", {"W": w}, None, 1, 1, 1, 1, "max", "zeros", "auto")[3]
        assert registry.select("auto", call).name != "triton"  # atomics in its max backward
        m = model()
        x = torch.randn(4, 3, 16, 16, device="cuda")
        for a, b in zip(grads(m, x), grads(m, x)):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(old)
