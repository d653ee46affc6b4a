"""Every backend that can run a call matches the float64 reference, forward and every gradient.

Backends are found through the registry, so each new backend is tested here automatically for
every call it says it supports."""
import pytest
import torch

from conftest import backends_for, check_backend, make_inputs

FULL = lambda o, c, k: (o, c) + k  # noqa: E731

# (op, reduce, needs positive x)
OPS = [
    ("linear", None, False), ("offset", None, False), ("quadratic", None, False), ("adder", None, False),
    ("l2", None, False), ("dilation", None, False), ("erosion", None, False),
    ("sigmoid(A*x)*B", "sum", False), ("tanh(x*A+B)", "mean", False), ("relu(x-A)*B", "sum", False),
    ("maximum(x, W)", "sum", False), ("-abs(x-W)", "logsumexp", False), ("A*exp(x)", "mean", False),
    ("A*sin(x+B)", "sum", False), ("x+W", "max", False), ("2*x + W", "logsumexp", False), ("x + W", "sum", False), ("A*log(x) + sqrt(x)*B", "sum", True),
    ("where(x > A, x - A, 0.5*(x - A))", "min", False), ("clamp(x*A, min=-0.2, max=0.3)", "sum", False),
]
MODES = ["zeros", "reflect", "replicate", "circular", "ignore"]

# (d, input spatial size, kernel, in channels, out channels, conv kwargs)
GEOMS = [
    (2, (7, 6), (3, 3), 4, 6, dict(padding=1)),
    (2, (9, 8), (3, 2), 4, 6, dict(stride=2, padding=(2, 1), dilation=(2, 1))),
    (2, (6, 6), (3, 3), 4, 6, dict(groups=2, padding=1)),
    (2, (6, 7), (3, 3), 4, 4, dict(groups=4, padding="same")),  # depthwise
    (1, (13,), (3,), 3, 5, dict(stride=2, padding=1)),
    (3, (4, 5, 4), (2, 3, 2), 2, 3, dict(padding=1, stride=(1, 2, 1))),
    (2, (5, 5), (1, 1), 3, 4, dict()),
]


def _case(op, d, size, k, cin, cout, kw, positive, dtype=torch.float64, bias=True, shape=None, n=2):
    from lambdaconv.ir import resolve_op
    names = resolve_op(op).weight_names
    groups = kw.get("groups", 1)
    wshape = shape or FULL(cout, cin // groups, k)
    return make_inputs(d, n, cin, size, {w: wshape for w in names}, dtype=dtype, bias=bias, positive=positive)


def _check_all(d, x, op, ws, b, **kw):
    found = backends_for(d, x, op, ws, b, **kw)
    assert "tiled" in found  # the direct path runs everything
    for backend in found:
        check_backend(backend, d, x, op, ws, b, **kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op,reduce,positive", OPS, ids=[o[0] for o in OPS])
def test_ops_by_padding_mode(op, reduce, positive, mode):
    d, size, k, cin, cout, kw = GEOMS[1]
    x, ws, b = _case(op, d, size, k, cin, cout, kw, positive)
    _check_all(d, x, op, ws, b, reduce=reduce, padding_mode=mode, **kw)


@pytest.mark.parametrize("mode", ["zeros", "ignore", "circular"])
@pytest.mark.parametrize("op,reduce", [("adder", "sum"), ("dilation", "max"), ("sigmoid(A*x)*B", "logsumexp"),
                                       ("offset", "mean"), ("erosion", "min")])
@pytest.mark.parametrize("geom", range(len(GEOMS)))
def test_geometries(geom, op, reduce, mode):
    d, size, k, cin, cout, kw = GEOMS[geom]
    x, ws, b = _case(op, d, size, k, cin, cout, kw, False)
    _check_all(d, x, op, ws, b, reduce=reduce, padding_mode=mode, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op,reduce", [("adder", "sum"), ("dilation", "max"), ("tanh(x*A+B)", "logsumexp"),
                                       ("quadratic", "mean")])
def test_dtypes(op, reduce, dtype):
    d, size, k, cin, cout, kw = GEOMS[0]
    x, ws, b = _case(op, d, size, k, cin, cout, kw, False, dtype=dtype)
    _check_all(d, x, op, ws, b, reduce=reduce, **kw)


@pytest.mark.parametrize("shape", [(6, 1, 1, 1), (), (1, 4, 3, 3), (6, 4, 1, 3), (6, 1, 3, 3)],
                         ids=["filter", "scalar", "per-channel", "row", "shared-over-c"])
def test_broadcast_weights(shape):
    # A is broadcast, B full: their broadcast shape gives out_channels and the kernel
    x, ws, b = make_inputs(2, 2, 4, (6, 6), {"A": shape, "B": (6, 4, 3, 3)})
    _check_all(2, x, "A*(x-B)", ws, b, padding=1)
    x, ws, b = make_inputs(2, 2, 4, (6, 6), {"A": shape, "B": (6, 4, 3, 3)})
    _check_all(2, x, lambda x, A, B: torch.maximum(x * A, B), ws, b, padding=1, reduce="max")


@pytest.mark.parametrize("op,reduce", [("adder", "sum"), ("dilation", "max"), ("A*x+B", "logsumexp"),
                                       ("l2", "mean")])
@pytest.mark.parametrize("geom", [0, 2, 5])
def test_many_small_tiles(small_tiles, geom, op, reduce):
    d, size, k, cin, cout, kw = GEOMS[geom]
    x, ws, b = _case(op, d, size, k, cin, cout, kw, False, n=3)
    _check_all(d, x, op, ws, b, reduce=reduce, padding_mode="ignore", **kw)


def test_no_bias_and_unbatched_input():
    x, ws, _ = make_inputs(2, 1, 3, (5, 5), {"weight": (4, 3, 3, 3)}, bias=False)
    _check_all(2, x[0].detach().requires_grad_(), "adder", ws, None, padding=1)


def test_no_grad_runs_the_backend_on_detached_inputs():
    """Under no_grad a module's parameters still require grad, and an autograd Function would see
    needs_input_grad (max / min would save winners for a backward that never runs): run_direct
    hands the backend detached inputs then, and the tensors as they are otherwise."""
    from lambdaconv import calls
    seen = []

    class Recorder:
        def run(self, x, bias, ws, call):
            seen.append([t.requires_grad for t in (x, bias, *ws.values())])
            return x

    x, b, w = (torch.randn(3, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        calls.run_direct(Recorder(), x, b, {"w": w}, None, None)
    calls.run_direct(Recorder(), x, b, {"w": w}, None, None)
    assert seen == [[False] * 3, [True] * 3]
