"""The triton Function (backends/triton/function.py) under create_graph=True and in-place updates,
on CPU tensors under TRITON_INTERPRET=1, in a child process as tests/test_triton.py explains.

The triton backend computes in float32 (float64 is refused), so gradgradcheck cannot run here: the
second-order gradients are compared with the float64 reference at float32 tolerance instead.
"""
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

from conftest import run_interpreted  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":

    def test_interpreted(tmp_path):
        run_interpreted(__file__, cache=tmp_path / "cache", all_ran=True)

else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import lambdaconv as lc  # noqa: E402
    from conftest import make_inputs  # noqa: E402
    from lambdaconv.ir import resolve_op  # noqa: E402

    SIG = "sigmoid(A*x)*B"

    def _inputs(op, dtype=torch.float32):
        names = resolve_op(op).weight_names
        x, ws, b = make_inputs(2, 1, 2, (4, 4), {n: (3, 2, 3, 3) for n in names}, dtype=dtype, seed=2)
        spread = torch.linspace(0, 3, x.numel(), dtype=torch.float64).reshape(x.shape).to(dtype)
        return (x.detach() + spread).requires_grad_(), ws, b

    def _penalty(op, backend, x, ws, b, reduce):
        y = lc.conv2d(x, op, ws, b, reduce=reduce, padding=1, backend=backend)
        assert backend != "triton" or y.grad_fn.name() == "TritonConvBackward"
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return torch.autograd.grad(y.mean() + 10 * (gx.norm() - 1) ** 2, [x, *ws.values(), b])

    @pytest.mark.parametrize("op,reduce", [(SIG, None), (SIG, "logsumexp"), ("adder", "mean"), ("dilation", None)])
    def test_create_graph_matches_reference(op, reduce):
        x, ws, b = _inputs(op)
        got = _penalty(op, "triton", x, ws, b, reduce)
        leaf = lambda t: t.detach().double().requires_grad_()  # noqa: E731
        want = _penalty(op, "reference", leaf(x), {n: leaf(w) for n, w in ws.items()}, leaf(b), reduce)
        for name, g, r in zip(["x", *ws, "bias"], got, want):
            assert g.dtype == torch.float32, name
            err = ((g.double() - r).norm() / r.norm().clamp_min(1e-30)).item()
            assert err <= 1e-4, f"grad {name}: relative error {err:.3g}"

    def test_first_order_stays_on_the_kernels():
        x, ws, b = _inputs(SIG)
        y = lc.conv2d(x, SIG, ws, b, padding=1, backend="triton")
        assert not any(g.requires_grad for g in torch.autograd.grad(y.sum(), [x, *ws.values()]))

    @pytest.mark.parametrize("op", ["adder", "dilation", SIG])
    def test_inplace_weight_update_raises(op):
        x, ws, b = _inputs(op)
        y = lc.conv2d(x, op, ws, b, padding=1, backend="triton")
        with torch.no_grad():
            next(iter(ws.values())).mul_(2.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()
