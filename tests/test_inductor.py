"""The Inductor-compiled CPU direct path against the float64 reference, forward and every gradient.

Each case compiles (a second or two), so the cases sample the space: every reduction at every
geometry of test_backends, the padding modes, the dtypes, grad= overrides, transposed holes, and
second derivatives; plus how "auto" chooses it and the fallback where Inductor cannot compile."""
import warnings

import pytest
import torch

import lambdaconv as lc
from lambdaconv import reductions
from lambdaconv.backends import inductor, registry
from lambdaconv.backends.inductor import compile as ind_compile

from conftest import check_backend
from test_backends import GEOMS, _case
from test_grad_override import ADDER, _hand

pytestmark = pytest.mark.skipif(ind_compile.failed() is not None, reason="Inductor cannot compile here")

OP_FOR = {"uniform": "sigmoid(A*x)*B", "count": "tanh(x*A+B)", "softmax": "-abs(x-W)", "select": "x+W"}


_FIRST_OF_KIND = {r.backward: r.name for r in reversed(reductions.all_records())}
# every reduction at the first geometry; at the others, one reduction of each backward kind
CASES = [(r, gi) for gi in range(len(GEOMS)) for r in reductions.names() if gi == 0 or r in _FIRST_OF_KIND.values()]


@pytest.mark.parametrize("reduce,geom", CASES)
def test_every_reduction_and_geometry(reduce, geom):
    d, size, k, cin, cout, kw = GEOMS[geom]
    op = OP_FOR[reductions.get(reduce).backward]
    x, ws, b = _case(op, d, size, k, cin, cout, kw, False)
    check_backend("inductor", d, x, op, ws, b, reduce=reduce, **kw)


@pytest.mark.parametrize("mode", ["ignore", "circular", "reflect"])
@pytest.mark.parametrize("reduce", ["mean", "max", "logsumexp"])
def test_padding_modes(reduce, mode):
    d, size, k, cin, cout, kw = GEOMS[1]  # stride 2, dilation, asymmetric padding
    op = "A*log(x) + sqrt(x)*B" if reduce == "mean" else "adder"  # x > 0: padded taps are the only zeros
    x, ws, b = _case(op, d, size, k, cin, cout, kw, op != "adder")
    check_backend("inductor", d, x, op, ws, b, reduce=reduce, padding_mode=mode, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes(dtype):
    d, size, k, cin, cout, kw = GEOMS[0]
    x, ws, b = _case("relu(x-A)*B", d, size, k, cin, cout, kw, False, dtype=dtype)
    check_backend("inductor", d, x, "relu(x-A)*B", ws, b, reduce="sum", **kw)


def test_broadcast_and_shared_weights():
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    a = torch.randn(6, 1, 1, 1, dtype=torch.float64, requires_grad=True)  # one per filter
    b = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)  # shared by the filters
    check_backend("inductor", 2, x, "A*(x-B)", {"A": a, "B": b}, None, padding=1)
    got, want = (torch.autograd.grad(lc.conv2d(x, "A*(x-B)", {"A": a, "B": a}, padding=1, backend=be).sum(), [x, a])
                 for be in ("inductor", "reference"))  # one tensor as both weights: both slots' gradients
    for p, q in zip(got, want):
        assert torch.allclose(p, q, atol=1e-10)


@pytest.mark.parametrize("reduce", [r.name for r in reductions.all_records() if r.backward != "softmax"])
def test_grad_override_matches_the_hand_computation(reduce):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64)
    y = lc.conv2d(x, "adder", {"weight": w}, padding=1, reduce=reduce, backend="inductor", grad=ADDER)
    gx, gw = torch.autograd.grad(y, [x, w], gy)
    hx, hw = _hand(x.detach(), w.detach(), gy, lambda a, b: (b - a).clamp(-1, 1), lambda a, b: a - b, reduce)
    assert torch.allclose(gx, hx, atol=1e-10) and torch.allclose(gw, hw, atol=1e-10)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "logsumexp"])
def test_transposed_holes(reduce, lc_settings):
    from test_transpose import definition
    lc_settings(cpu_compile="1")  # "auto" picks it at any size
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    args = ((2, 1), (1, 0), (1, 0), 1, (1, 2))
    y = lc.conv_transpose2d(x, "adder", {"weight": w}, None, *args, reduce=reduce)
    want = definition(x.detach(), "adder", {"weight": w.detach()}, None, *args, reduce)
    assert torch.allclose(y, want, atol=1e-10, equal_nan=True)
    ref = lc.conv_transpose2d(x, "adder", {"weight": w}, None, *args, reduce=reduce, backend="tiled")
    fin = torch.isfinite(want)
    for a, b in zip(torch.autograd.grad(y[fin].sum(), [x, w]), torch.autograd.grad(ref[fin].sum(), [x, w])):
        assert torch.allclose(a, b, atol=1e-10)


def test_second_derivatives():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: lc.conv2d(x, "sigmoid(A*x)*B", {"A": w, "B": w * 0.5}, padding=1,  # noqa: E731
                                reduce="logsumexp", backend="inductor")
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_auto_compiles_only_calls_large_enough(lc_settings):
    small = lc.explain("adder", input=torch.randn(1, 2, 5, 5), weights={"weight": torch.randn(3, 2, 3, 3)})
    assert small.backend == "tiled"
    big_x, big_w = torch.randn(4, 32, 32, 32), {"weight": torch.randn(32, 32, 3, 3)}
    plan = lc.explain("adder", input=big_x, weights=big_w)
    assert plan.backend == "inductor" and "Inductor-compiled" in str(plan)
    lc_settings(cpu_compile="0")
    assert lc.explain("adder", input=big_x, weights=big_w).backend == "tiled"
    lc_settings(cpu_compile="1")
    assert lc.explain("adder", input=torch.randn(1, 2, 5, 5), weights={"weight": torch.randn(3, 2, 3, 3)}).backend \
        == "inductor"
    assert registry.get("inductor").unsupported(registry.Call(
        lc.ir.resolve_op("adder"), "sum", None, torch.device("meta"), torch.float32)) is not None


def test_falls_back_to_tiled_with_one_warning(monkeypatch):
    def no_compiler(fn, args, taps=1):
        raise OSError("no C++ compiler")
    monkeypatch.setattr(ind_compile, "_build", no_compiler)
    monkeypatch.setattr(ind_compile, "_COMPILED", {})
    monkeypatch.setattr(ind_compile, "_failed", [])
    monkeypatch.setattr(inductor, "_warned", [])
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64)
    w = {"weight": torch.randn(3, 2, 3, 3, dtype=torch.float64)}
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        y = lc.conv2d(x, "adder", w, padding=1, backend="inductor")
    assert torch.allclose(y, lc.conv2d(x, "adder", w, padding=1, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only; and "auto" no longer picks it
        with lc.settings.override(cpu_compile="1"):
            assert lc.explain("adder", input=x, weights=w).backend == "tiled"
    x2 = torch.randn(1, 2, 6, 6, dtype=torch.float64)  # a new call naming it: refused, saying why
    with pytest.raises(ValueError, match="could not compile"):
        lc.conv2d(x2, "adder", w, padding=1, backend="inductor")


def test_torch_compile_of_a_model_with_compiled_layers(lc_settings):
    lc_settings(cpu_compile="1")
    torch.manual_seed(0)
    m = torch.nn.Sequential(lc.Conv2d(3, 4, 3, padding=1, op="adder"), torch.nn.ReLU(),
                            lc.Conv2d(4, 4, 3, padding=1, op="dilation"))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert lc.explain("adder", input=x, weights={"weight": m[0].weight}).backend == "inductor"
    y0 = m(x)
    g0 = torch.autograd.grad(y0.sum(), [x, *m.parameters()])
    y1 = torch.compile(m, fullgraph=True)(x)
    g1 = torch.autograd.grad(y1.sum(), [x, *m.parameters()])
    assert torch.allclose(y0, y1) and all(torch.allclose(a, b) for a, b in zip(g0, g1))


def test_a_graph_that_does_not_compile_runs_tiled(monkeypatch):
    def lowering_bug(fn, args, taps=1):
        raise RuntimeError("cannot lower this op")
    monkeypatch.setattr(ind_compile, "_build", lowering_bug)
    monkeypatch.setattr(ind_compile, "_COMPILED", {})
    monkeypatch.setattr(inductor, "_warned", [])
    x = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    w = {"weight": torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)}
    with pytest.warns(RuntimeWarning, match="cannot lower this op"):
        y = lc.conv2d(x, "adder", w, padding=1, backend="inductor")
    assert torch.allclose(y, lc.conv2d(x, "adder", w, padding=1, backend="reference"))
    assert ind_compile.failed() is None  # the backend stays on for other graphs
    y.sum().backward()
    assert x.grad is not None


def test_a_warm_cache_loads_the_kept_module_without_compiling(lc_settings, tmp_path, monkeypatch):
    """A new process (here: the in-process cache emptied) loads the module an earlier compile kept,
    without Inductor's compile path; a record whose module is gone is compiled again."""
    import json
    import os

    import torch._inductor.compile_fx as cfx
    from lambdaconv.backends.inductor import warm
    lc_settings(cache_dir=str(tmp_path), cpu_compile="1")
    x = torch.randn(1, 3, 6, 5, dtype=torch.float64)
    w = {"weight": torch.randn(4, 3, 3, 3, dtype=torch.float64)}
    want = lc.conv2d(x, "adder", w, padding=1, backend="reference")
    monkeypatch.setattr(ind_compile, "_COMPILED", {})
    assert torch.allclose(lc.conv2d(x, "adder", w, padding=1, backend="inductor"), want)
    records = [f for f in os.listdir(tmp_path / "inductor") if not f.startswith("vec-isa")]
    assert records, "the compile kept no record"

    def no_compile(*a, **k):
        raise AssertionError("compiled although the cache was warm")
    monkeypatch.setattr(cfx, "compile_fx_inner", no_compile)
    monkeypatch.setattr(ind_compile, "_COMPILED", {})
    assert torch.allclose(lc.conv2d(x, "adder", w, padding=1, backend="inductor"), want)

    for f in records:  # the kept modules deleted: the records are ignored, the graphs compiled again
        with open(tmp_path / "inductor" / f) as fh:
            os.remove(json.load(fh)[1])
        assert warm.load(f[:-len(".json")]) is None
    monkeypatch.undo()
    lc_settings(cache_dir=str(tmp_path), cpu_compile="1")
    monkeypatch.setattr(ind_compile, "_COMPILED", {})
    assert torch.allclose(lc.conv2d(x, "adder", w, padding=1, backend="inductor"), want)


SHARED = "exp(A*x) * (B + exp(A*x))"  # a heavy term read twice: Inductor would store it per tap


def _shared_case():
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    ws = {n: (0.1 * torch.randn(16, 16, 3, 3, dtype=torch.float64)).requires_grad_() for n in "AB"}
    return x, ws


def test_shared_heavy_terms_are_not_materialized(lc_settings, monkeypatch):
    """The taps (here 82944 values) stay in the loops: no buffer above the budget (twice the largest
    input or output times the kernel's taps plus one tile, the tile shrunk here to 16 elements:
    28816), forward and backward exact."""
    lc_settings(tile_elements=16)
    monkeypatch.setattr(ind_compile, "_COMPILED", {})
    monkeypatch.setattr(inductor, "_warned", [])
    x, ws = _shared_case()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the tiled path
        check_backend("inductor", 2, x, SHARED, ws, None, padding=1)


def test_a_graph_that_would_materialize_the_taps_runs_tiled(lc_settings, monkeypatch):
    lc_settings(tile_elements=16)
    monkeypatch.setattr(ind_compile, "_COMPILED", {})
    monkeypatch.setattr(inductor, "_warned", [])
    monkeypatch.setattr(ind_compile, "unshare", lambda gm, budget: None)  # Inductor's choice left alone
    x, ws = _shared_case()
    with pytest.warns(RuntimeWarning, match="would materialize"):
        y = lc.conv2d(x, SHARED, ws, padding=1, backend="inductor")
    assert torch.allclose(y, lc.conv2d(x, SHARED, ws, padding=1, backend="reference"))


def test_check_buffers_reads_every_allocation(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def call(args):\n"
                   "    buf0 = empty_strided_cpu((2, 3), (3, 1), torch.float32)\n"
                   "    buf1 = empty_strided_cpu((4, 8, 16), (128, 16, 1), torch.float32)\n")
    ind_compile.check_buffers(str(src), 512)
    with pytest.raises(ind_compile.Unavailable, match="512 elements"):
        ind_compile.check_buffers(str(src), 511)
    for text in ("def call(args):\n    return ()\n",  # nothing it can read: refused
                 "buf0 = empty_strided_cpu((2, 3), (3, 1), torch.float32)\n",
                 "def call(args):\n    buf0 = empty_strided((s0, 3), (3, 1), torch.float32)\n"):
        src.write_text(text)
        with pytest.raises(ind_compile.Unavailable):
            ind_compile.check_buffers(str(src), 10 ** 9)


def test_float32_tanh_through_the_cheaper_form(monkeypatch):
    from lambdaconv.backends.inductor import fastmath
    used = []
    monkeypatch.setitem(fastmath.FNS, "tanh", lambda z: used.append(z.shape) or fastmath.tanh(z))
    monkeypatch.setattr(ind_compile, "_COMPILED", {})  # traced again, so the form is seen in use
    d, size, k, cin, cout, kw = GEOMS[0]
    x, ws, b = _case("tanh(x*A+B)", d, size, k, cin, cout, kw, False, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled, not the tiled fallback
        check_backend("inductor", d, x, "tanh(x*A+B)", ws, b, reduce="sum", **kw)
    assert used, "the compiled graphs did not evaluate tanh through fastmath"


def test_tanh_gradient_has_no_cancellation_near_saturation():
    """The compiled backward takes tanh's derivative as 4e / (1 + e)^2, e = exp(-2|z|): where
    tanh(z) rounds near +-1 in float32, 1 - tanh(z)^2 would lose the gradient (7e-4 relative at 5)."""
    x = torch.linspace(3.0, 8.0, 2 * 1 * 6 * 6).reshape(2, 1, 6, 6).requires_grad_()
    ws = {"A": torch.ones(1, 1, 1, 1, requires_grad=True), "B": torch.zeros(1, 1, 1, 1, requires_grad=True)}
    got = torch.autograd.grad(lc.conv2d(x, "tanh(x*A+B)", ws, backend="inductor").sum(), [x, *ws.values()])
    x64, w64 = x.detach().double().requires_grad_(), {k: v.detach().double().requires_grad_() for k, v in ws.items()}
    want = torch.autograd.grad(lc.conv2d(x64, "tanh(x*A+B)", w64, backend="reference").sum(), [x64, *w64.values()])
    for g, w in zip(got, want):
        assert ((g.double() - w).abs() / w.abs()).max() < 1e-5


def test_a_kept_module_over_the_budget_is_not_loaded(lc_settings, tmp_path):
    """A record kept before the budget existed (or under other thresholds) is compiled again."""
    import json
    from lambdaconv.backends.inductor import warm
    lc_settings(cache_dir=str(tmp_path))
    mod = tmp_path / "big.py"
    mod.write_text("def call(args):\n    buf0 = empty_strided_cpu((64, 1024), (1024, 1), torch.float32)\n")
    (tmp_path / "inductor").mkdir()
    (tmp_path / "inductor" / "k.json").write_text(json.dumps(["key", str(mod)]))
    seen = []
    assert warm.load("k", lambda p: seen.append(p) or ind_compile._fits(p, 1000)) is None
    assert seen == [str(mod)] and ind_compile._fits(str(mod), 65536)
