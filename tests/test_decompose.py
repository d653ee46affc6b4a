"""The decompose backend and its plan: separable ops run as one native conv and match the reference.

Every decomposable op of issue 3 must plan "decompose" and match the float64 reference, forward and
every gradient, for every padding mode, groups (depthwise too), stride, dilation, conv1d/2d/3d,
reduce sum and mean, float64 and float32; the non-separable ones must plan "direct" and say why.
"""
import pytest
import torch

import lambdaconv as lc
from lambdaconv import backends, reductions
from lambdaconv.functional import prepare
from lambdaconv.ir import resolve_op
from lambdaconv.plan import MAX_TERMS

from conftest import make_inputs, rel_err, run_with_grads

DECOMPOSABLE = [
    "linear", "offset", "quadratic", "A*x**2 + B*x + C", "l2", "A*exp(x)", "A*sin(x+B)", "(x*W + 1)**3",
    "A*x**3 + B*x**2 + C*x", "A*exp(x+B) - cos(x)*B/2",
]
DIRECT = [  # (op, reduce, what the plan must say)
    ("adder", "sum", "abs(x - weight) does not separate in x and weight"),
    ("-abs(x-W)", "mean", "abs(x - W) does not separate in x and W"),
    ("sigmoid(A*x)*B", "sum", "sigmoid(A*x) does not separate in x and A"),
    ("tanh(x*A+B)", "sum", "tanh(x*A + B) does not separate in x and A, B"),
    ("relu(x-A)*B", "sum", "relu(x - A) does not separate in x and A"),
    ("maximum(x, W)", "sum", "maximum(x, W) does not separate in x and W"),
    ("exp(x*A)", "sum", "exp(x*A) does not separate in x and A"),
    ("x - x + A", "sum", "does not depend on x"),
] + [(op, r.name, f"reduce {r.name} is not linear in the taps")  # every non-linear reduction record
     for r in reductions.all_records() if not r.linear for op in ("offset", "linear")]
MODES = ["zeros", "reflect", "replicate", "circular", "ignore"]
LINEAR = [r.name for r in reductions.all_records() if r.linear]  # the reductions decompose applies to
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}

# (d, input size, kernel, in channels, out channels, conv kwargs)
GEOMS = {
    "2d-groups-stride-dilation": (2, (7, 8), (3, 2), 4, 6, dict(groups=2, stride=(2, 1), dilation=(1, 2),
                                                                padding=(2, 1))),
    "depthwise-same-even": (2, (6, 7), (3, 2), 4, 4, dict(groups=4, padding="same")),  # asymmetric padding
    "1d-stride": (1, (13,), (3,), 3, 5, dict(stride=2, padding=1)),
    "3d": (3, (4, 5, 4), (2, 3, 2), 2, 3, dict(padding=1, stride=(1, 2, 1))),
    "1x1": (2, (5, 5), (1, 1), 3, 4, dict()),
    "pad-larger-than-kernel": (2, (5, 6), (2, 2), 2, 3, dict(padding=2)),  # windows with no valid tap
}


def _inputs(op, geom, dtype=torch.float64, bias=True, seed=0):
    d, size, k, cin, cout, kw = GEOMS[geom]
    names = resolve_op(op).weight_names
    shape = (cout, cin // kw.get("groups", 1)) + k
    x, ws, b = make_inputs(d, 2, cin, size, {w: shape for w in names}, dtype=dtype, bias=bias, seed=seed)
    return d, x, ws, b, kw


def _check(d, x, op, ws, b, tol, **kw):
    """decompose vs the float64 reference: output and the gradient of input, every weight, bias."""
    call = prepare(d, x, op, ws, b, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                   kw.get("groups", 1), kw.get("reduce"), kw.get("padding_mode", "zeros"), "auto")[3]
    assert backends.select("auto", call).name == "decompose"
    ref = lambda t: t.detach().double().requires_grad_()  # noqa: E731
    yr, gr = run_with_grads(d, ref(x), op, {k: ref(v) for k, v in ws.items()}, None if b is None else ref(b),
                            "reference", **kw)
    y, g = run_with_grads(d, x, op, ws, b, "decompose", **kw)
    assert y.dtype == x.dtype
    names = ["output", "grad input"] + [f"grad {k}" for k in ws] + (["grad bias"] if b is not None else [])
    for name, a, r in zip(names, [y] + list(g), [yr] + list(gr)):
        r = torch.zeros_like(a, dtype=torch.float64) if r is None else r
        assert a is not None, name
        err = rel_err(a, r)
        assert err <= tol, f"{op} {kw}: {name} relative error {err:.3g} > {tol:g}"


@pytest.mark.parametrize("reduce", LINEAR)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", DECOMPOSABLE)
def test_ops_by_padding_mode(op, mode, reduce):
    assert lc.explain(op, reduce).strategy == "decompose"
    d, x, ws, b, kw = _inputs(op, "2d-groups-stride-dilation")
    _check(d, x, op, ws, b, TOL[torch.float64], reduce=reduce, padding_mode=mode, **kw)


@pytest.mark.parametrize("mode", ["zeros", "ignore", "circular", "replicate"])
@pytest.mark.parametrize("op,reduce", [("offset", "sum"), ("l2", "mean"), ("A*exp(x)", "sum"),
                                       ("A*sin(x+B)", "mean"), ("A*x**2 + B*x + C", "mean")])
@pytest.mark.parametrize("geom", [g for g in GEOMS if g != "2d-groups-stride-dilation"])
def test_geometries(geom, op, reduce, mode):
    if mode == "circular" and geom == "pad-larger-than-kernel":
        pytest.skip("circular padding must not exceed the input")
    d, x, ws, b, kw = _inputs(op, geom)
    _check(d, x, op, ws, b, TOL[torch.float64], reduce=reduce, padding_mode=mode, **kw)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "ignore"])
@pytest.mark.parametrize("op", DECOMPOSABLE)
def test_float32(op, mode):
    d, x, ws, b, kw = _inputs(op, "2d-groups-stride-dilation", dtype=torch.float32)
    _check(d, x, op, ws, b, TOL[torch.float32], reduce="mean" if mode == "reflect" else "sum", padding_mode=mode,
           **kw)


def test_no_bias_broadcast_weights_and_callable():
    x, ws, _ = make_inputs(2, 2, 4, (6, 6), {"A": (6, 1, 1, 1), "B": (1, 4, 3, 3)}, bias=False)
    _check(2, x, lambda x, A, B: A * (x - B), ws, None, TOL[torch.float64], padding=1)
    _check(2, x, "A*x**2 + B*x + 0.5", ws, None, TOL[torch.float64], padding=1, padding_mode="ignore",
           reduce="mean")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    d, x, ws, b, kw = _inputs("A*sin(x+B)", "2d-groups-stride-dilation", dtype=dtype)
    y, g = run_with_grads(d, x, "A*sin(x+B)", ws, b, "decompose", padding_mode="ignore", reduce="mean", **kw)
    yr = lc.conv2d(x.double(), "A*sin(x+B)", {k: v.double() for k, v in ws.items()}, b.double(),
                   padding_mode="ignore", reduce="mean", backend="reference", **kw)
    assert y.dtype == dtype and all(t.dtype == dtype for t in g)
    assert rel_err(y, yr) < 2e-2


def test_autocast_behaves_like_conv2d():
    x, ws, b = make_inputs(2, 2, 4, (6, 6), {"A": (6, 4, 3, 3), "B": (6, 4, 3, 3)}, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lc.conv2d(x, "quadratic", ws, b, padding=1)
        ref_dtype = torch.nn.functional.conv2d(x, ws["A"], b, padding=1).dtype
    assert y.dtype == ref_dtype == torch.bfloat16
    yr = lc.conv2d(x.double(), "quadratic", {k: v.double() for k, v in ws.items()}, b.double(), padding=1,
                   backend="reference")
    assert rel_err(y, yr) < 2e-2


def test_nan_propagates():
    d, x, ws, b, kw = _inputs("A*exp(x+B)", "2d-groups-stride-dilation")
    x = x.detach().clone()
    x[0, 1, 3, 4] = float("nan")
    x[1, 2, 0, 0] = float("inf")
    for mode in ("zeros", "ignore", "reflect"):
        y = lc.conv2d(x, "A*exp(x+B)", ws, b, padding_mode=mode, **kw)
        yr = lc.conv2d(x, "A*exp(x+B)", ws, b, padding_mode=mode, backend="reference", **kw)
        assert torch.isnan(y).any()
        assert rel_err(y, yr) < 1e-9  # same NaN and inf pattern, same finite values
    # A NaN weight reaches every output of its filter. (Not under "ignore": there a tap that falls
    # on the padding still meets the conv's zero, and 0 * NaN is NaN where the reference skips it.)
    ws["B"].data[2, 1, 1, 0] = float("nan")
    y = lc.conv2d(x, "A*exp(x+B)", ws, b, **kw)
    assert torch.isnan(y[:, 2]).all()
    assert rel_err(y, lc.conv2d(x, "A*exp(x+B)", ws, b, backend="reference", **kw)) < 1e-9


@pytest.mark.parametrize("op,reduce,why", DIRECT)
def test_direct_ops(op, reduce, why):
    plan = lc.explain(op, reduce)
    assert plan.strategy == "direct"
    assert why in plan.reason and why in str(plan)
    assert not plan.terms and not plan.calls
    spec = resolve_op(op)
    if spec.weight_names:
        x, ws, b = make_inputs(2, 1, 2, (4, 4), {w: (3, 2, 3, 3) for w in spec.weight_names})
        with pytest.raises(ValueError, match="plan is direct"):
            lc.conv2d(x, op, ws, b, reduce=reduce, backend="decompose")


def test_plan_text():
    plan = lc.explain("A*(x-B)")
    text = str(plan)
    assert plan.strategy == "decompose" and plan.reduce == "sum"
    assert "A*(x - B)" in text and "x * [A]" in text and "-(A*B)" in text
    assert "input [x]: in_channels" in text and "bias + sum over taps of -(A*B)" in text
    plan = lc.explain("quadratic", "mean")
    assert plan.terms == (("x", "B"), ("x**2", "A"))
    assert "[x, x**2]: 2 x in_channels stacked per group" in str(plan) and "[B, A] / taps" in str(plan)
    plan = lc.explain("A*sin(x+B)")
    assert plan.terms == (("sin(x)", "A*cos(B)"), ("cos(x)", "A*sin(B)"))
    assert lc.Conv2d(2, 3, 3, op="l2").explain() == lc.explain("l2")


def test_term_threshold():
    many = " + ".join(f"A{j}*x**{j}" for j in range(1, MAX_TERMS + 2))
    assert lc.explain(many).strategy == "direct"
    assert f"separable into {MAX_TERMS + 1} terms, slower than direct" in lc.explain(many).reason
    ok = " + ".join(f"A{j}*x**{j}" for j in range(1, MAX_TERMS + 1))
    assert lc.explain(ok).strategy == "decompose"


def test_module_runs_decompose():
    torch.manual_seed(0)
    layer = lc.Conv2d(4, 6, 3, padding=1, groups=2, op="offset", padding_mode="reflect").double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    ws = {n: getattr(layer, n) for n in layer.weight_names}
    yr = lc.conv2d(x, "offset", ws, layer.bias, padding=1, groups=2, padding_mode="reflect", backend="reference")
    assert layer.explain().strategy == "decompose" and rel_err(y, yr) < 1e-12


def test_offset_fast_path():
    """A*(x-B) with full weights and reduce sum runs as conv(x, A, bias - sum_taps(A*B)): the output
    is the native conv's (no output-sized op after it) and every gradient matches the reference."""
    for mode in ("zeros", "reflect"):
        d, x, ws, b, kw = _inputs("offset", "2d-groups-stride-dilation")
        _check(d, x, "offset", ws, b, TOL[torch.float64], padding_mode=mode, **kw)
        _check(d, x, "B*(x - A)", ws, None, TOL[torch.float64], padding_mode=mode, **kw)  # no bias
        for op, bias in (("offset", b), ("B*(x - A)", None)):
            y = lc.conv2d(x, op, ws, bias, padding_mode=mode, **kw)
            assert y.grad_fn.name() == "ConvolutionBackward0"
    # gradients only where asked; float64 gradcheck through the aten ops
    d, x, ws, b, kw = _inputs("offset", "1d-stride")
    x.requires_grad_(False)
    y = lc.conv1d(x, "offset", ws, b, **kw)
    (ga,) = torch.autograd.grad(y.sum(), [ws["A"]])
    assert ga.shape == ws["A"].shape
    f = lambda x, A, B, b: lc.conv1d(x, "offset", {"A": A, "B": B}, b, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), ws["A"], ws["B"], b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_offset_half_inputs(dtype):
    """Half inputs take the general path (constant in float32, rounded once): same math."""
    x, ws, b = make_inputs(2, 2, 4, (6, 6), {"A": (6, 4, 3, 3), "B": (6, 4, 3, 3)}, dtype=dtype)
    y = lc.conv2d(x, "offset", ws, b, padding=1)
    assert y.dtype == dtype
    grads = torch.autograd.grad(y.float().sum(), [x, ws["A"], ws["B"], b])
    ref = [t.detach().double().requires_grad_() for t in (x, ws["A"], ws["B"], b)]
    yr = lc.conv2d(ref[0], "offset", {"A": ref[1], "B": ref[2]}, ref[3], padding=1, backend="reference")
    for a, r in zip([y] + list(grads), [yr] + list(torch.autograd.grad(yr.sum(), ref))):
        assert a.dtype == dtype and rel_err(a, r) < 2e-2


def test_offset_fast_path_autocast():
    x, ws, b = make_inputs(2, 2, 4, (6, 6), {"A": (6, 4, 3, 3), "B": (6, 4, 3, 3)}, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lc.conv2d(x, "offset", ws, b, padding=1)
    assert y.dtype == torch.bfloat16
    grads = torch.autograd.grad(y.float().sum(), [x, ws["A"], ws["B"], b])
    assert all(g.dtype == torch.float32 for g in grads)
    ref = [t.detach().double().requires_grad_() for t in (x, ws["A"], ws["B"], b)]
    yr = lc.conv2d(ref[0], "offset", {"A": ref[1], "B": ref[2]}, ref[3], padding=1, backend="reference")
    for a, r in zip([y] + list(grads), [yr] + list(torch.autograd.grad(yr.sum(), ref))):
        assert rel_err(a, r) < 2e-2


@pytest.mark.parametrize("op", ["offset", "A*sin(x+B)", "(x*W + 1)**3"])
def test_inference_path_matches(op):
    """Without a graph to record the Functions are skipped: the same values."""
    d, x, ws, b, kw = _inputs(op, "2d-groups-stride-dilation")
    y = lc.conv2d(x, op, ws, b, **kw)
    with torch.no_grad():
        assert torch.equal(lc.conv2d(x, op, ws, b, **kw), y)


def test_offset_runner_follows_dtype_changes_of_one_layer():
    """The cached runner is specialized per call signature: the same layer in float32, then in
    float64, then with a half bias (mixed dtypes: the general path), matches the reference each time."""
    layer = lc.Conv2d(4, 6, 3, padding=1, op="offset")
    x = torch.randn(2, 4, 7, 7)
    for step in ("float32", "float64", "mixed"):
        if step == "float64":
            layer, x = layer.double(), x.double()
        if step == "mixed":
            layer.bias.data = layer.bias.data.half()
        y = layer(x)
        ref = lc.conv2d(x.double(), "offset", {"A": layer.A.double(), "B": layer.B.double()},
                        layer.bias.double(), padding=1, backend="reference")
        assert rel_err(y, ref) < (1e-5 if step == "float32" else 1e-3 if step == "mixed" else 1e-12), step
        assert y.grad_fn.name() == "ConvolutionBackward0", step  # the conv last, no output-sized op
