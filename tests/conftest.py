"""Shared test helpers: compare any backend with the float64 reference, forward and every gradient."""
import contextlib

import pytest
import torch

import lambdaconv as lc
from lambdaconv.backends import registry
from lambdaconv.functional import prepare

# relative tolerance of a backend's result against the float64 reference, per input dtype
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}

CONV = {1: lc.conv1d, 2: lc.conv2d, 3: lc.conv3d}


def rel_err(a, b):
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), "NaN pattern differs"
    a, b = a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0)
    inf = torch.isinf(b)
    assert torch.equal(a[inf], b[inf]), "inf values differ"
    a, b = a.masked_fill(inf, 0), b.masked_fill(inf, 0)
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item() if b.numel() else 0.0


def make_inputs(d, n, c, size, wshapes, dtype=torch.float64, bias=True, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, c) + tuple(size), generator=g, dtype=torch.float64)
    if positive:
        x = x.abs() + 0.1
    ws = {k: torch.randn(s, generator=g, dtype=torch.float64) * 0.5 for k, s in wshapes.items()}
    o = torch.broadcast_shapes(*[torch.Size(s) for s in wshapes.values()])[0] if wshapes else 1
    b = torch.randn(o, generator=g, dtype=torch.float64) if bias else None
    cast = lambda t: None if t is None else t.to(dtype).requires_grad_()  # noqa: E731
    return cast(x), {k: cast(v) for k, v in ws.items()}, cast(b)


def run_with_grads(d, x, op, ws, b, backend, seed=1, **kw):
    y = CONV[d](x, op, ws, b, backend=backend, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y.dtype)
    leaves = [x] + list(ws.values()) + ([b] if b is not None else [])
    grads = torch.autograd.grad(y, leaves, gy, allow_unused=True)
    return y, grads


def check_backend(backend, d, x, op, ws, b, **kw):
    """Assert `backend` matches the float64 reference (forward and all grads) within TOL[dtype]."""
    ref_x = x.detach().double().requires_grad_()
    ref_ws = {k: v.detach().double().requires_grad_() for k, v in ws.items()}
    ref_b = None if b is None else b.detach().double().requires_grad_()
    yr, gr = run_with_grads(d, ref_x, op, ref_ws, ref_b, "reference", **kw)
    y, g = run_with_grads(d, x, op, ws, b, backend, **kw)
    assert y.dtype == x.dtype
    tol = TOL[x.dtype]
    names = ["output", "grad input"] + [f"grad {k}" for k in ws] + (["grad bias"] if b is not None else [])
    for name, a, r in zip(names, [y] + list(g), [yr] + list(gr)):
        assert a is not None, name
        if r is None:  # autograd: the output does not depend on it (e.g. used only in a where condition)
            r = torch.zeros_like(a, dtype=torch.float64)
        err = rel_err(a, r)
        assert err <= tol, f"{backend}: {name} relative error {err:.3g} > {tol:g}"


def backends_for(d, x, op, ws, b, **kw):
    """Every registered non-reference backend that can run this call and that "auto" would not pass
    over at its size (compiled backends: tests/test_inductor.py runs them at these sizes)."""
    args = dict(stride=1, padding=0, dilation=1, groups=1, reduce=None, padding_mode="zeros")
    args.update(kw)
    _, _, _, call, _ = prepare(d, x, op, ws, b, args["stride"], args["padding"], args["dilation"],
                               args["groups"], args["reduce"], args["padding_mode"], "auto")
    return [n for n in registry.names()[1:] if n != "reference" and registry.get(n).unsupported(call) is None
            and (registry.get(n).passes_over is None or registry.get(n).passes_over(call) is None)]


@pytest.fixture
def lc_settings():
    """set(**changes): lambdaconv.settings changed for the rest of the test, restored after it."""
    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(lc.settings.override(**changes))


@pytest.fixture
def small_tiles(lc_settings):
    """Force many tiny tiles so that the tile bookkeeping (edges, groups, batch splits) is exercised."""
    lc_settings(tile_elements=64)


def run_interpreted(test_file, cache=None, args=(), timeout=900, all_ran=False):
    """Run `test_file` again in a child pytest under TRITON_INTERPRET=1 (triton kernels on CPU; the
    interpreter must be chosen before triton is imported, hence a process of its own) and assert it
    passed; `cache`: LAMBDACONV_CACHE for the child (None: unset); `all_ran`: nothing skipped."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("LAMBDACONV_CACHE", None)
    if cache is not None:
        env["LAMBDACONV_CACHE"] = str(cache)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly", *args,
           os.path.abspath(test_file)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    if all_ran:
        assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
