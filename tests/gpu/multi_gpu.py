"""Two GPUs over NCCL: DDP, FSDP2 (fully_shard) and torch.compile of the DDP model, one process per GPU.

    python tests/gpu/multi_gpu.py ddp|fsdp|compile|all [--out DIR] [--cpu]

Each check spawns 2 ranks (rank r on cuda:r) training a small network of decompose and direct
layers (offset, adder, max-plus) on its half of one batch, and compares with one process training
the whole batch on cuda:0: DDP's gradients equal across ranks (bitwise) and equal to the whole
batch's; FSDP2's losses over a few SGD steps equal the single-GPU run's; the compiled DDP model's
gradients equal the eager whole batch's. Exit code 0 when every check passes; a line per check.
tests/gpu/test_multi_gpu.py runs it where there are two or more GPUs.

NVLink multicast stays off in everything this starts (NCCL_NVLS_ENABLE=0 and the device tool's
other settings): a program that uses it can put a shared host's GPUs out of service.
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import tempfile

for _k, _v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ[_k] = _v  # inherited by the spawned ranks

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn as nn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))
import lambdaconv as lc  # noqa: E402

WORLD = 2
STEPS = 3
BATCH = 8


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(lc.Conv2d(3, 8, 3, padding=1, op="offset"), nn.ReLU(),
                         lc.Conv2d(8, 8, 3, padding=1, op="adder"),
                         lc.Conv2d(8, 4, 3, stride=2, padding=1, op="dilation"),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def batch() -> tuple:
    g = torch.Generator().manual_seed(5)
    return torch.randn(BATCH, 3, 12, 12, generator=g), torch.randn(BATCH, 2, generator=g)


def loss_of(net, x, t):
    return (net(x) - t).pow(2).mean()  # a mean over equal shards: the averaged gradients are the batch's


def train(net, params, x, t, value) -> list:
    """STEPS steps of SGD; value(loss) of each step."""
    opt = torch.optim.SGD(params, lr=1e-3)
    out = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_of(net, x, t)
        loss.backward()
        opt.step()
        out.append(value(loss))
    return out


def single(mode: str, device) -> dict:
    """The whole batch in one process: the gradients of one step, or the losses of STEPS steps."""
    net = model().to(device)
    x, t = (v.to(device) for v in batch())
    if mode == "fsdp":
        return {"losses": train(net, net.parameters(), x, t, lambda loss: loss.item())}
    loss_of(net, x, t).backward()
    return {"grads": [p.grad.detach().cpu() for p in net.parameters()]}


def _rank(rank: int, port: int, mode: str, out: str, cpu: bool) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if cpu:  # --cpu: the same checks over gloo (the script's own test where there is no GPU)
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    else:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
        dist.init_process_group("nccl", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120),
                                device_id=device)
    try:
        net = model().to(device)
        x, t = (v.chunk(WORLD)[rank].to(device) for v in batch())
        if mode == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(device.type, (WORLD,))
            for layer in net:
                if isinstance(layer, lc.Conv2d):
                    fully_shard(layer, mesh=mesh)
            wrapped = fully_shard(net, mesh=mesh)
            def whole(loss):  # the whole batch's loss: the mean of the shards'
                both = loss.detach().clone()
                dist.all_reduce(both)
                return both.item() / WORLD

            result = {"losses": train(wrapped, net.parameters(), x, t, whole)}
        else:
            wrapped = nn.parallel.DistributedDataParallel(net, device_ids=None if cpu else [rank])
            if mode == "compile":
                wrapped = torch.compile(wrapped)
            loss_of(wrapped, x, t).backward()
            result = {"grads": [p.grad.detach().cpu() for p in net.parameters()]}
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(mode: str, out: str, cpu: bool = False) -> str:
    """Run one check; returns a line saying what matched (AssertionError otherwise)."""
    os.makedirs(out, exist_ok=True)
    mp.spawn(_rank, args=(_port(), mode, out, cpu), nprocs=WORLD, join=True)
    got = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]
    want = single(mode, torch.device("cpu" if cpu else "cuda:0"))
    if mode == "fsdp":
        for r in got:
            torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(want["losses"]), rtol=1e-4, atol=1e-6)
        return f"fsdp: losses over {STEPS} steps {got[0]['losses']} = one process {want['losses']}"
    for a, b in zip(got[0]["grads"], got[1]["grads"]):
        assert torch.equal(a, b), "the ranks' gradients differ"
    for i, (a, b) in enumerate(zip(got[0]["grads"], want["grads"])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item(), msg=f"parameter {i}")
    return f"{mode}: gradients equal on both ranks and to the whole batch's in one process"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["ddp", "fsdp", "compile", "all"])
    p.add_argument("--out", help="where the ranks write their results (default: a temporary folder)")
    p.add_argument("--cpu", action="store_true", help="over gloo on the CPU instead (checks this script)")
    args = p.parse_args(argv)
    if not args.cpu and torch.cuda.device_count() < WORLD:
        print(f"needs {WORLD} GPUs, this machine has {torch.cuda.device_count()}")
        return 2
    modes = ["ddp", "fsdp", "compile"] if args.mode == "all" else [args.mode]
    failed = 0
    for mode in modes:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                print(check(mode, os.path.join(args.out or tmp, mode), args.cpu), flush=True)
            except Exception as err:  # one line per failed check, then the others still run
                failed += 1
                print(f"{mode}: FAILED {type(err).__name__}: {err}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
