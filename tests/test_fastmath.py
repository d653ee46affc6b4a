"""The compiled CPU path's cheaper tanh against float64 tanh: ulps over a dense float32 grid."""
import numpy as np
import torch

from lambdaconv.backends.inductor import fastmath


def _ulps(got: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    ref = torch.tanh(z.double())
    ulp = torch.from_numpy(np.spacing(ref.abs().float().numpy())).double()
    return (got.double() - ref).abs() / ulp


def test_tanh_within_a_few_ulps_everywhere():
    tiny = torch.logspace(-38, 1.2, 200001)
    z = torch.cat([torch.linspace(-12, 12, 2000001), tiny, -tiny,
                   torch.tensor([fastmath._BREAK, -fastmath._BREAK, np.nextafter(fastmath._BREAK, 0)])]).float()
    err = _ulps(fastmath.tanh(z), z)
    assert err.max().item() <= 1.5, f"max error {err.max().item():.3f} ulp at z = {z[err.argmax()].item()}"


def test_tanh_special_values():
    z = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 30.0, -30.0, 1e-30])
    got = fastmath.tanh(z)
    assert got[:2].tolist() == [0.0, 0.0] and torch.signbit(got[1]) and not torch.signbit(got[0])
    assert got[2:4].tolist() == [1.0, -1.0] and got[4].isnan()
    assert got[5:7].tolist() == [1.0, -1.0] and got[7].item() == np.float32(1e-30)


def test_only_float32_graphs_without_nested_tanh_use_it():
    from lambdaconv.ir import resolve_op
    e = resolve_op("tanh(A*x+B) * sigmoid(x)").expr
    assert fastmath.for_expr(e, torch.float32)["tanh"] is fastmath.tanh
    assert fastmath.for_expr(e, torch.bfloat16) and fastmath.for_expr(e, torch.float16)
    assert fastmath.for_expr(e, torch.float64) == {}
    assert fastmath.for_expr(resolve_op("tanh(A*tanh(x*B))").expr, torch.float32) == {}


def test_tanh_partial_rule_is_the_same_derivative():
    from lambdaconv.ir import evaluate_many, resolve_op
    spec = resolve_op("tanh(A*x+B) * x")
    exact, ruled = spec.partials(), spec.partials(fastmath.PARTIALS)
    assert any("exp" in str(q) for q in ruled) and not any("exp" in str(p) for p in exact)
    torch.manual_seed(0)
    x = 4 * torch.randn(1000, dtype=torch.float64)
    ws = {"A": torch.randn(1000, dtype=torch.float64), "B": torch.randn(1000, dtype=torch.float64)}
    for p, q in zip(evaluate_many(list(exact), x, ws), evaluate_many(list(ruled), x, ws)):
        # 1e-8: the exact form 1 - tanh^2 itself cancels in float64 near saturation (2e-10 at |z| = 8, 0 past 19)
        assert torch.allclose(p, q, rtol=1e-8, atol=1e-12)
