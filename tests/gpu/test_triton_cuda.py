"""The triton backend on a CUDA device against the float64 reference, forward and gradients.

Every op the reference supports (presets, every IR function, every reduce), every conv option,
fp32 with TF32 off (relative error < 1e-4) and fp16/bf16 within their rounding. Skipped without CUDA.
"""
import pytest
import torch

import lambdaconv as lc
from lambdaconv import reductions

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("triton")

CONV = {1: lc.conv1d, 2: lc.conv2d, 3: lc.conv3d}
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.fixture(autouse=True)
def _no_tf32(lc_settings, monkeypatch):
    lc_settings(tune=False)  # one config per kernel: fewer compiles
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), "NaN pattern differs"
    a, b = torch.nan_to_num(a, posinf=0, neginf=0), torch.nan_to_num(b, posinf=0, neginf=0)
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(d, op, reduce=None, n=2, c=4, o=6, size=9, k=3, dtype=torch.float32, wnames=("weight",), bias=True,
          positive=False, seed=0, **kw):
    g = torch.Generator(device="cuda").manual_seed(seed)
    groups = kw.get("groups", 1)
    x = torch.randn((n, c) + (size,) * d, device="cuda", generator=g)
    if positive:
        x = x.abs() + 0.2
    ws = {w: torch.randn((o, c // groups) + (k,) * d, device="cuda", generator=g) * 0.5 for w in wnames}
    b = torch.randn(o, device="cuda", generator=g) if bias else None
    # the reference runs on the CPU in float64 (the definition; it is not a GPU path)
    leaves = [t.to(dtype).requires_grad_() for t in [x, *ws.values()] + ([b] if bias else [])]
    leaves_r = [t.detach().double().cpu().requires_grad_() for t in leaves]  # the same rounded inputs
    out = []
    for backend, lv in (("reference", leaves_r), ("triton", leaves)):
        wd = dict(zip(wnames, lv[1:1 + len(wnames)]))
        y = CONV[d](lv[0], op, wd, lv[-1] if bias else None, reduce=reduce, backend=backend, **kw)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
        grads = torch.autograd.grad(y, lv, gy, allow_unused=True)
        out.append([t if t is None else t.cpu() for t in [y, *grads]])
    for name, a, r in zip(["y", "gx"] + [f"g{w}" for w in wnames] + ["gb"], out[1], out[0]):
        r = torch.zeros_like(a, dtype=torch.float64) if r is None else r
        assert a is not None, name
        assert a.dtype == dtype, name
        err = rel(a, r)
        assert err < TOL[dtype], f"{op} {reduce} {kw}: {name} rel err {err:.2e}"


PRESETS = ["linear", "offset", "quadratic", "adder", "l2", "dilation", "erosion"]
REDUCES = reductions.names()
UNARY = ["abs", "sign", "exp", "expm1", "log", "log1p", "sqrt", "sin", "cos", "tan", "atan", "tanh", "sigmoid",
         "softplus", "relu", "erf"]
BINARY = ["maximum(x, weight)", "minimum(x, weight)", "x / weight", "x ** 2 * weight", "x ** 3 - weight",
          "(abs(x) + 1) ** weight", "x ** 0.5 * weight", "where(x > weight, x, weight)", "clamp(x * weight, -0.5, 0.5)"]


@pytest.mark.parametrize("op", PRESETS)
@pytest.mark.parametrize("reduce", REDUCES)
def test_presets_every_reduce(op, reduce):
    wn = ("A", "B") if op in ("offset", "quadratic") else ("weight",)
    check(2, op, reduce, wnames=wn, padding=1)


@pytest.mark.parametrize("expr", [f"{u}(x*weight)" for u in UNARY] + BINARY)
def test_every_function(expr):
    positive = any(f in expr for f in ("log", "sqrt", "0.5", "/"))
    check(1, expr, size=17, positive=positive, padding=1)


OPTIONS = [dict(padding=1, stride=2), dict(padding=2, dilation=2), dict(padding=1, groups=2),
           dict(padding=1, groups=4, o=4, c=4), dict(padding=1, padding_mode="ignore"),
           dict(padding=1, padding_mode="reflect"), dict(padding=1, padding_mode="replicate"),
           dict(padding=2, padding_mode="circular", stride=3), dict(padding="same", k=4)]


@pytest.mark.parametrize("kw", OPTIONS, ids=[str(k) for k in OPTIONS])
@pytest.mark.parametrize("op,reduce", [("adder", None), ("dilation", None), ("x*weight", "logsumexp"),
                                       ("adder", "mean")])
def test_options(op, reduce, kw):
    check(2, op, reduce, **kw)


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("op", ["adder", "dilation"])
def test_dims(d, op):
    check(d, op, size=7 if d == 3 else 20, padding=1, stride=2 if d == 1 else 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op,reduce,wn", [("adder", None, ("weight",)), ("dilation", None, ("weight",)),
                                          ("sigmoid(A*x)*B", None, ("A", "B"))])
def test_half(op, reduce, wn, dtype):
    check(2, op, reduce, wnames=wn, dtype=dtype, padding=1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["dilation", "erosion"])
def test_half_inference_is_rounded_fp32(op, dtype):
    # without grad, max/min of x+W run in fp16 (bf16: in fp32): same values as fp32 then rounding
    x = torch.randn(4, 16, 20, 20, device="cuda").to(dtype)
    w = {"weight": (torch.randn(24, 16, 3, 3, device="cuda") * 0.5).to(dtype)}
    with torch.no_grad():
        y = lc.conv2d(x, op, w, padding=1, backend="triton")
        y32 = lc.conv2d(x.float(), op, {"weight": w["weight"].float()}, padding=1, backend="triton")
    assert torch.equal(y, y32.to(dtype))


@pytest.mark.parametrize("op,reduce", [("adder", None), ("dilation", None), ("x+weight", "logsumexp")])
def test_many_channels(lc_settings, op, reduce, monkeypatch):
    lc_settings(tune=True)
    # tiles of 64 channels, the outer-product weight gradient, the tuner's candidates
    check(2, op, reduce, n=3, c=48, o=80, size=12, padding=1)


def test_auto_picks_triton_for_direct_ops():
    from lambdaconv.backends import registry
    from lambdaconv.functional import prepare
    x = torch.randn(1, 2, 5, 5, device="cuda")
    call = prepare(2, x, "adder", {"weight": torch.randn(2, 2, 3, 3, device="cuda")}, None, 1, 0, 1, 1, None,
                   "zeros", "auto")[3]
    assert registry.select("auto", call).name == "triton"


GLUON_CASES = [  # (op, reduce, weights, dims, conv kwargs): tails in rows, out channels and BLOCK_K
    ("adder", None, ("weight",), 2, dict(padding=1)),
    ("adder", "mean", ("weight",), 2, dict(padding=2, dilation=2, stride=2)),
    ("dilation", None, ("weight",), 2, dict(padding=1, groups=2)),
    ("erosion", None, ("weight",), 1, dict(padding=1, stride=2)),
    ("-(x+weight)", "max", ("weight",), 3, dict(padding=1)),
    ("sigmoid(A*x)*B", None, ("A", "B"), 2, dict(padding=1, padding_mode="reflect")),
    ("maximum(x, weight)", "sum", ("weight",), 2, dict(padding=0)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", GLUON_CASES, ids=[f"{c[0]}-{c[1]}-{c[3]}d" for c in GLUON_CASES])
def test_gluon_forward(lc_settings, case, dtype, monkeypatch):
    # inference forward through the Gluon kernel ("strict": a compile failure fails the test instead
    # of falling back), against the float64 reference; sizes leave tails in every tile dimension
    op, reduce, wn, d, kw = case
    lc_settings(gluon="strict")
    g = torch.Generator(device="cuda").manual_seed(3)
    groups = kw.get("groups", 1)
    c, o, size = 12, 70, (13 if d < 3 else 6)
    x = torch.randn((3, c) + (size,) * d, device="cuda", generator=g).to(dtype)
    ws = {w: (torch.randn((o, c // groups) + (3,) * d, device="cuda", generator=g) * 0.5).to(dtype) for w in wn}
    b = torch.randn(o, device="cuda", generator=g)
    with torch.no_grad():
        y = CONV[d](x, op, ws, b, reduce=reduce, backend="triton", **kw)
        r = CONV[d](x.double().cpu(), op, {k: v.double().cpu() for k, v in ws.items()}, b.double().cpu(),
                    reduce=reduce, backend="reference", **kw)
    assert y.dtype == dtype
    assert rel(y.cpu(), r) < TOL[dtype]


def test_gluon_fallback_warns_once(monkeypatch):
    # an op the Gluon kernel cannot print (a helper function) silently takes the portable kernel; a
    # module that fails to compile warns once and falls back
    from lambdaconv.backends.triton import gluon
    from lambdaconv.ir.spec import resolve_op
    assert gluon.source(resolve_op("tanh(x*weight)"), "sum", "tl.float32") is None
    assert gluon.source(resolve_op("-abs(x-weight)"), "sum", "tl.float32") is not None
    fail = lambda cfg: (_ for _ in ()).throw(RuntimeError("no layout"))  # noqa: E731
    monkeypatch.setattr(gluon, "layout", fail)  # the register kernel's configs
    monkeypatch.setattr(gluon.gluon_staged, "layouts", fail)  # the staged kernel's
    monkeypatch.setattr(gluon, "_failed", set())
    x = torch.randn(2, 4, 9, 9, device="cuda")
    w = {"weight": torch.randn(5, 4, 3, 3, device="cuda")}
    with pytest.warns(RuntimeWarning, match="Gluon"):
        with torch.no_grad():
            y = lc.conv2d(x, "adder", w, padding=1, backend="triton")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            y2 = lc.conv2d(x, "adder", w, padding=1, backend="triton")
    assert torch.equal(y, y2)


@pytest.mark.parametrize("i", range(16))
@pytest.mark.parametrize("op,reduce,wn", [("adder", None, ("weight",)), ("sigmoid(A*x)*B", None, ("A", "B")),
                                          ("dilation", None, ("weight",)), ("-(x-weight)**2", "mean", ("weight",))])
def test_gluon_every_config(lc_settings, i, op, reduce, wn, monkeypatch):
    # each tuner candidate (unrolled, pipelined, ...) on its own, channels a multiple of BLOCK_K and not
    from lambdaconv.backends.triton import gluon
    if i >= len(gluon.CONFIGS):
        pytest.skip("fewer configs")
    lc_settings(gluon="strict")
    monkeypatch.setattr(gluon, "CONFIGS", [gluon.CONFIGS[i]])
    g = torch.Generator(device="cuda").manual_seed(i)
    for c, o in ((16, 64), (12, 70)):
        x = torch.randn(2, c, 11, 11, device="cuda", generator=g)
        ws = {w: torch.randn(o, c, 3, 3, device="cuda", generator=g) * 0.5 for w in wn}
        with torch.no_grad():
            y = lc.conv2d(x, op, ws, padding=1, reduce=reduce, backend="triton")
            r = lc.conv2d(x.double().cpu(), op, {k: v.double().cpu() for k, v in ws.items()}, padding=1,
                          reduce=reduce, backend="reference")
        assert rel(y.cpu(), r) < 1e-4, (c, o)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d,kw", [(2, dict(padding=1, stride=2)), (2, dict(padding=2, dilation=2, groups=2)),
                                  (1, dict(padding=1, padding_mode="reflect")), (3, dict(padding=1)),
                                  (2, dict(padding=0, groups=4))])
def test_gluon_staged_geometry(lc_settings, d, kw, dtype, monkeypatch):
    # the shared-memory-staged forward configs (K_MODE 4) one by one, training (sum-type: no winners)
    # and inference (max), over stride / dilation / groups / padding modes / 1-3 dims and fp16
    from lambdaconv.backends.triton import gluon
    lc_settings(gluon="strict")
    staged = [c for c in gluon.CONFIGS if gluon.gluon_staged.is_staged(c)]
    assert staged
    for cfg in staged:
        monkeypatch.setattr(gluon, "CONFIGS", [cfg])
        check(d, "adder", None, c=16, o=40, size=5 if d == 3 else 11, dtype=dtype, **kw)
        g = torch.Generator(device="cuda").manual_seed(3)
        x = torch.randn((3, 16) + (9,) * d, device="cuda", generator=g).to(dtype)
        w = torch.randn((24, 16 // kw.get("groups", 1)) + (3,) * d, device="cuda", generator=g).to(dtype)
        with torch.no_grad():
            y = CONV[d](x, "dilation", {"weight": w}, backend="triton", **kw)
        r = CONV[d](x.double().cpu(), "dilation", {"weight": w.double().cpu()}, backend="reference", **kw)
        assert rel(y.cpu(), r) < TOL[dtype], cfg


@pytest.mark.parametrize("kw", [dict(padding=1), dict(padding=1, stride=2), dict(padding=2, dilation=2, groups=2),
                                dict(padding=1, padding_mode="reflect"), dict(padding=0)],
                         ids=["pad", "stride2", "dil-groups", "reflect", "valid"])
@pytest.mark.parametrize("op,reduce,wn", [("adder", None, ("weight",)), ("sigmoid(A*x)*B", None, ("A", "B")),
                                          ("x*weight", "mean", ("weight",))])
def test_gluon_backward(lc_settings, op, reduce, wn, kw, monkeypatch):
    # the opt-in Gluon backward kernels (input gradient: stride 1; weights: any stride), "strict"
    lc_settings(gluon="strict")
    lc_settings(gluon_bwd="1")
    check(2, op, reduce, wnames=wn, n=3, c=12, o=20, size=13, **kw)


@pytest.mark.parametrize("u", ["1", "2", "4"])
@pytest.mark.parametrize("op,wn", [("adder", ("weight",)), ("sigmoid(A*x)*B", ("A", "B"))])
def test_gluon_backward_full_tiles(lc_settings, op, wn, u, monkeypatch):
    # channels a multiple of the tiles (no clamped offsets: the kernels' fast addressing), rows
    # unrolled ROWS_U times in the weight gradient, rows not a multiple of the unrolled block
    lc_settings(gluon="strict")
    lc_settings(gluon_bwd="1")
    lc_settings(gluon_gw_u=int(u))
    check(2, op, None, wnames=wn, n=3, c=64, o=32, size=13, padding=1)


@pytest.mark.parametrize("nan_gy", [False, True])
@pytest.mark.parametrize("sgn", ["0", "1"])
def test_gluon_backward_sign_ties_nan(lc_settings, sgn, nan_gy, monkeypatch):
    # |x - w|'s gradients with many ties (small integers: sign 0 there), NaN and inf inputs, and a
    # NaN upstream gradient (the kernels' exact loop) or none (their fast loop: ties add nothing),
    # through the predicated sign accumulation ("1") and the selects ("0"): values and NaN / inf
    # patterns as the float64 reference's
    lc_settings(gluon="strict")
    lc_settings(gluon_bwd="1")
    lc_settings(gluon_sgn=sgn)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(-2, 3, (2, 16, 9, 9), device="cuda", generator=g).float()
    w = torch.randint(-2, 3, (32, 16, 3, 3), device="cuda", generator=g).float()
    x[0, 3, 4, 4], x[1, 5, 0, 0] = float("nan"), float("inf")
    gy = torch.randint(-3, 4, (2, 32, 9, 9), device="cuda", generator=g).float()
    if nan_gy:
        gy[1, 7, 3, 3] = float("nan")
    grads = []
    for backend, dev, dt in (("triton", "cuda", torch.float32), ("reference", "cpu", torch.float64)):
        xr, wr = x.to(dev, dt).requires_grad_(), w.to(dev, dt).requires_grad_()
        y = lc.conv2d(xr, "adder", {"weight": wr}, padding=1, backend=backend)
        grads.append([t.cpu().double() for t in torch.autograd.grad(y, (xr, wr), gy.to(dev, dt))])
    for a, r in zip(*grads):
        assert torch.equal(torch.isinf(a), torch.isinf(r)) and rel(a, r) < 1e-6


@pytest.mark.parametrize("d", [1, 3])
def test_gluon_backward_dims(lc_settings, d, monkeypatch):
    lc_settings(gluon="strict")
    lc_settings(gluon_bwd="1")
    check(d, "adder", None, c=6, o=10, size=7 if d == 3 else 30, padding=1)


@pytest.mark.parametrize("i", range(16))
@pytest.mark.parametrize("op,reduce,kw", [("dilation", None, dict(padding=1)), ("erosion", None, dict(padding=1, stride=2)),
                                          ("-(x+weight)", "max", dict(padding=2, dilation=2, groups=2))])
def test_gluon_winner_matches_portable(lc_settings, i, op, reduce, kw, monkeypatch):
    # max/min training: the Gluon forward keeps the winning step and finds the tap in it; with many
    # ties (small integers) its winners, hence every gradient, equal the portable kernel's bit for bit
    from lambdaconv.backends.triton import gluon
    if i >= len(gluon.CONFIGS) or not gluon.keeps_winners(gluon.CONFIGS[i]):
        pytest.skip("fewer configs, or a config never used to save winners (channel-major, staged)")
    monkeypatch.setattr(gluon, "CONFIGS", [gluon.CONFIGS[i]])
    g = torch.Generator(device="cuda").manual_seed(i)
    for c, o in ((16, 64), (12, 70)):
        x = torch.randint(-2, 3, (2, c, 11, 11), device="cuda", generator=g).float()
        w = torch.randint(-2, 3, (o, c // kw.get("groups", 1), 3, 3), device="cuda", generator=g).float()
        outs = {}
        for mode in ("strict", "0"):
            lc_settings(gluon=mode)
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = lc.conv2d(xr, op, {"weight": wr}, reduce=reduce, backend="triton", **kw)
            gy = torch.arange(y.numel(), device="cuda", dtype=torch.float32).reshape(y.shape) % 7 - 3
            outs[mode] = (y, *torch.autograd.grad(y, [xr, wr], gy))
        for a, b in zip(outs["strict"], outs["0"]):
            assert torch.equal(a, b), (c, o)
    r = lc.conv2d(x.double().cpu().requires_grad_(), op, {"weight": w.double().cpu()}, reduce=reduce,
                  backend="reference", **kw)
    assert rel(outs["strict"][0].cpu(), r) < 1e-6


@pytest.mark.parametrize("fast", ["1", "0"])
def test_fast_launch_repeated_calls(lc_settings, fast, monkeypatch):
    # the second and later launches of a Gluon kernel skip Triton's argument binding (launch.py):
    # repeated calls, a change of batch size (new ints) and of dtype, each against the reference
    from lambdaconv.backends.triton import launch
    lc_settings(gluon="strict")
    lc_settings(fast_launch=fast != '0')
    for n in (2, 2, 3, 2):
        check(2, "adder", n=n, c=16, o=16, size=10, padding=1)
    check(2, "adder", n=2, c=16, o=16, size=10, padding=1, dtype=torch.float16)
    if fast == "1" and launch._OK:
        assert launch._cache  # the fast path was taken
