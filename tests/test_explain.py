"""explain() with a call's tensors: backend, kernels and the performance model's cost."""
import pytest
import torch

import lambdaconv as lc
from lambdaconv import cost
from lambdaconv.backends import registry
from lambdaconv.functional import prepare
from lambdaconv.ir import resolve_op


def test_without_tensors_it_is_the_plan():
    p = lc.explain("adder")
    assert p.strategy == "direct" and p.backend == "" and p.kernels == () and p.cost == ()


def test_direct_call_names_backend_kernels_and_cost():
    x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 4, 3, 3)
    p = lc.explain("adder", input=x, weights={"weight": w}, padding=1)
    assert p.backend == registry.select("auto", prepare(2, x, "adder", {"weight": w}, None, 1, 1, 1, 1, None,
                                                         "zeros", "auto")[3]).name
    assert p.kernels and p.cost and "taps" in p.cost[0]
    text = str(p)
    assert "backend:" in text and "cost:" in text
    # the module says the same for its own weights
    layer = lc.Conv2d(4, 6, 3, padding=1, op="adder")
    assert str(layer.explain(x)).splitlines()[:5] == str(lc.explain("adder", input=x, weights={"weight": layer.weight},
                                                                     bias=layer.bias, padding=1)).splitlines()[:5]


def test_decompose_call_and_errors_as_conv():
    x, a = torch.randn(2, 3, 8, 8), torch.randn(5, 3, 3, 3)
    p = lc.explain("offset", input=x, weights={"A": a, "B": a})
    assert p.strategy == "decompose" and p.backend == "decompose"
    with pytest.raises(ValueError, match="needs weight 'B'"):
        lc.explain("offset", input=x, weights={"A": a})
    with pytest.raises(TypeError, match="both input and weights"):
        lc.explain("offset", input=x)


def test_cost_counts():
    # adder: one subtraction (abs and the negation are operand modifiers) and the add that reduces
    assert cost.per_tap(resolve_op("adder").expr) == (1, 0)
    assert cost.per_tap(resolve_op("sigmoid(A*x)*B").expr) == (4, 2)  # mul, sigmoid (add + rcp(exp)), mul
    from lambdaconv.geometry import make_geometry
    g = make_geometry(2, (16, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1, "zeros")
    c = cost.estimate(resolve_op("adder"), g, 4, 64 * 64 * 9)
    assert c.taps == 16 * 64 * 56 * 56 * 64 * 9 and c.alu_per_tap == 2 and c.bound == "CUDA-core arithmetic"
    assert c.floor_ms == pytest.approx(c.taps * 2 / cost.CUDA_CORE_PER_S * 1e3)


def test_triton_describes_its_kernels_without_a_gpu():
    pytest.importorskip("triton")
    x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 4, 3, 3)
    call = prepare(2, x, "dilation", {"weight": w}, None, 1, 1, 1, 1, None, "zeros", "auto")[3]
    lines = registry.get("triton").describe(call)
    assert lines[0].startswith("forward:") and any("_bwd_select" in line for line in lines)
