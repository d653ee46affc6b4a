"""Several GPUs: every op on cuda:1 while cuda:0 is current, and DDP / FSDP2 / torch.compile of DDP over
NCCL on two GPUs (tests/gpu/multi_gpu.py, one process per GPU). Skipped with fewer than two GPUs.
The CPU side of DDP and FSDP2 (gloo): tests/test_ecosystem.py."""
import os
import subprocess
import sys

import pytest
import torch

import lambdaconv as lc
from lambdaconv import reductions
from lambdaconv.ir import resolve_op
from lambdaconv.ir.spec import PRESETS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-4  # float32 against the float64 reference, relative to the result's norm


@pytest.mark.parametrize("reduce", reductions.names())
@pytest.mark.parametrize("op", sorted(PRESETS) + ["sigmoid(A*x)*B"])
def test_every_op_on_the_second_gpu(op, reduce):
    """Kernels launched for tensors on cuda:1 while cuda:0 is current (the per-device caches of
    configs and compiled kernels, the launch's device guard): forward and every gradient against
    the float64 reference on the CPU; the output stays on cuda:1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g) + torch.linspace(0, 3, 384).reshape(2, 3, 8, 8)
    ws = {n: 0.5 * torch.randn(4, 3, 3, 3, generator=g) for n in resolve_op(op).weight_names}
    leaves = [x, *ws.values()]
    dev = [t.to("cuda:1").requires_grad_() for t in leaves]
    ref = [t.double().requires_grad_() for t in leaves]
    names = list(ws)
    with torch.cuda.device(0):
        y = lc.conv2d(dev[0], op, dict(zip(names, dev[1:])), padding=1, reduce=reduce)
        assert y.device == torch.device("cuda:1")
        gy = torch.randn(y.shape, generator=g)
        got = [y, *torch.autograd.grad(y, dev, gy.to(y.device))]
        torch.cuda.synchronize(1)
    r = lc.conv2d(ref[0], op, dict(zip(names, ref[1:])), padding=1, reduce=reduce, backend="reference")
    want = [r, *torch.autograd.grad(r, ref, gy.double())]
    for i, (a, b) in enumerate(zip(got, want)):
        err = ((a.detach().cpu().double() - b).norm() / b.norm().clamp_min(1e-30)).item()
        assert err <= TOL, f"tensor {i}: relative error {err:.3g}"


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "compile"])
def test_distributed_over_nccl(mode, tmp_path):
    """DDP: gradients equal across ranks and to the whole batch's on one GPU; FSDP2: losses over a
    few steps equal the single GPU's; torch.compile of the DDP model: as DDP."""
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
    r = subprocess.run([sys.executable, os.path.join(HERE, "multi_gpu.py"), mode, "--out", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "FAILED" not in r.stdout and mode in r.stdout
