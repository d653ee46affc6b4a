"""backend="triton" against the float64 reference, on CPU tensors under TRITON_INTERPRET=1.

Triton decides between compiling and interpreting when a kernel is decorated, and with the
variable set "auto" would pick the triton backend on CPU: so the cases run in a child process that
has TRITON_INTERPRET=1 from its start, and the setting never leaks into the other tests. Shapes are
tiny (the interpreter runs each tl op as a numpy call).
"""
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))

from conftest import run_interpreted  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":

    def test_interpreted_suite(tmp_path):
        run_interpreted(__file__, cache=tmp_path / "cache")

else:
    sys.path.insert(0, HERE)
    from conftest import CONV, check_backend, make_inputs, rel_err  # noqa: E402

    import lambdaconv as lc  # noqa: E402
    from lambdaconv.backends.triton import kernels  # noqa: E402

    SIG = "lambda x, A, B: torch.sigmoid(A * x) * B"

    def _w(o, cg, k, d, names=("weight",)):
        return {n: (o, cg) + (k,) * d for n in names}

    CASES = [
        # (id, d, op, reduce, weights, conv kwargs)
        ("adder-pad-bias", 2, "adder", None, _w(3, 2, 3, 2), dict(padding=1)),
        ("adder-stride-dilation", 2, "adder", None, _w(3, 2, 3, 2), dict(padding=2, stride=2, dilation=2)),
        ("adder-mean-ignore", 2, "adder", "mean", _w(3, 2, 3, 2), dict(padding=1, padding_mode="ignore")),
        ("dilation-max", 2, "dilation", None, _w(3, 2, 3, 2), dict(padding=1)),
        ("dilation-max-ignore-stride", 2, "dilation", None, _w(3, 2, 3, 2),
         dict(padding=1, stride=2, padding_mode="ignore")),
        ("erosion-min-ignore", 2, "erosion", None, _w(3, 2, 3, 2), dict(padding=1, padding_mode="ignore")),
        ("logsumexp", 2, "x+weight", "logsumexp", _w(3, 2, 3, 2), dict(padding=1)),
        ("logsumexp-ignore", 2, "x*weight", "logsumexp", _w(3, 2, 3, 2), dict(padding=1, padding_mode="ignore")),
        ("sigmoid-groups", 2, "sigmoid(A*x)*B", None, _w(4, 1, 3, 2, ("A", "B")), dict(padding=1, groups=2)),
        ("offset-depthwise-reflect", 2, "offset", None, _w(2, 1, 3, 2, ("A", "B")),
         dict(padding=1, groups=2, padding_mode="reflect")),
        ("adder-1d-circular", 1, "adder", None, _w(3, 2, 3, 1), dict(padding=2, stride=2, padding_mode="circular")),
        ("dilation-3d-replicate", 3, "dilation", None, _w(2, 2, 2, 3), dict(padding=1, padding_mode="replicate")),
        ("broadcast-weight", 2, "A*(x-B)", None, {"A": (3, 1, 1, 1), "B": (3, 2, 3, 3)}, dict(padding=1)),
    ]

    @pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
    def test_matches_reference(case):
        _, d, op, reduce, wshapes, kw = case
        size = (5,) * d if d == 3 else (7,) * d
        c = max(s[1] for s in wshapes.values()) * kw.get("groups", 1)
        x, ws, b = make_inputs(d, 2, c, size, wshapes, dtype=torch.float32, bias=True)
        check_backend("triton", d, x, op, ws, b, reduce=reduce, **kw)

    def test_outer_product_weight_grad(lc_settings, monkeypatch):
        # the GPU's weight-gradient kernel for many channels; the interpreter defaults to the other
        lc_settings(triton_gw="outer")
        x, ws, b = make_inputs(2, 1, 2, (4, 4), _w(3, 2, 3, 2), dtype=torch.float32)
        check_backend("triton", 2, x, "adder", ws, b, padding=1, padding_mode="ignore")
        x, ws, b = make_inputs(2, 1, 2, (4, 3), _w(3, 2, 2, 2), dtype=torch.float32)
        check_backend("triton", 2, x, "x*weight", ws, b, padding=1, reduce="logsumexp")

    UNARY = ["abs", "sign", "exp", "expm1", "log", "log1p", "sqrt", "sin", "cos", "tan", "atan", "tanh",
             "sigmoid", "softplus", "relu", "erf"]
    BINARY = ["maximum(x, weight)", "minimum(x, weight)", "x / weight", "x ** 2 * weight", "x ** 3 - weight",
              "(abs(x) + 1) ** weight", "x ** 0.5 * weight", "x ** -1 + weight", "where(x > weight, x, weight)",
              "where(x <= weight, x * weight, 1.0)", "clamp(x * weight, -0.5, 0.5)"]

    @pytest.mark.parametrize("expr", [f"{u}(x*weight)" for u in UNARY] + BINARY)
    def test_every_op(expr):
        positive = any(f in expr for f in ("log", "sqrt", "0.5"))
        x, ws, b = make_inputs(1, 2, 2, (6,), _w(2, 2, 3, 1), dtype=torch.float32, bias=False, positive=positive)
        if "x / weight" in expr or "** -1" in expr:
            x = (x.detach().abs() + 0.5).requires_grad_()
        check_backend("triton", 1, x, expr, ws, None, padding=1)

    @pytest.mark.parametrize("op,reduce", [("adder", None), ("dilation", None), ("x+weight", "logsumexp")])
    def test_nan_propagates(op, reduce):
        x, ws, b = make_inputs(2, 1, 2, (6, 6), _w(2, 2, 3, 2), dtype=torch.float32, bias=False)
        x = x.detach().clone()
        x[0, 1, 2, 3] = float("nan")
        y = lc.conv2d(x, op, ws, reduce=reduce, padding=1, backend="triton")
        yr = lc.conv2d(x.double(), op, {k: v.double() for k, v in ws.items()}, reduce=reduce, padding=1,
                       backend="reference")
        assert torch.isnan(y).any()
        assert rel_err(y, yr) < 1e-5

    def test_half_precision():
        x, ws, b = make_inputs(2, 2, 2, (6, 6), _w(3, 2, 3, 2), dtype=torch.float16)
        check_backend("triton", 2, x, "adder", ws, b, padding=1)
        x, ws, b = make_inputs(2, 2, 2, (6, 6), _w(3, 2, 3, 2), dtype=torch.float16)
        check_backend("triton", 2, x, "dilation", ws, b, padding=1)

    @pytest.mark.parametrize("d,size,kw", [(1, (7,), dict(padding=2)), (2, (5, 6), dict(padding="same")),
                                           (2, (4, 5), dict(padding=(1, 0))), (3, (3, 4, 5), dict(padding=1))])
    def test_pad_kernel_is_f_pad(d, size, kw):
        """pad.py's one-pass zero padding (the Gluon kernels' input on CUDA) equals F.pad, NaN included."""
        from lambdaconv.backends.triton.pad import pad_zeros
        from lambdaconv.geometry import make_geometry, pad_input

        x = torch.randn((2, 3) + size)
        x.view(-1)[5] = float("nan")
        g = make_geometry(d, tuple(x.shape), (4, 3) + (4,) * d, 1, kw["padding"], 1, 1, "zeros")
        want = pad_input(x, g)
        assert want.shape != x.shape
        assert torch.equal(pad_zeros(x, g).nan_to_num(7.0), want.nan_to_num(7.0))

    def test_float64_is_refused():
        x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
        with pytest.raises(ValueError, match="float64"):
            lc.conv2d(x, "adder", {"weight": torch.randn(2, 2, 3, 3, dtype=torch.float64)}, backend="triton")

    def test_inference_skips_saved_winners():
        # no grad needed: the max kernel keeps no winning-tap index (its plain max is cheaper)
        x, ws, _ = make_inputs(2, 1, 2, (6, 6), _w(2, 2, 3, 2), dtype=torch.float32, bias=False)
        with torch.no_grad():
            y = CONV[2](x, "dilation", ws, padding=1, backend="triton")
        yr = CONV[2](x.double(), "dilation", {k: v.double() for k, v in ws.items()}, padding=1, backend="reference")
        assert rel_err(y, yr) < 1e-6
        # fp16 inference computes max-plus in fp16: the rounded fp32 result, bit for bit
        xh, wh = x.detach().half(), {k: v.detach().half() for k, v in ws.items()}
        with torch.no_grad():
            yh = CONV[2](xh, "dilation", wh, padding=1, backend="triton")
            y32 = CONV[2](xh.float(), "dilation", {k: v.float() for k, v in wh.items()}, padding=1, backend="triton")
        assert torch.equal(yh, y32.half())

    def _race(args):
        path, text, n = args
        for _ in range(n):
            kernels._write_atomic(path, text)
        return True

    def test_cache_writes_are_atomic(tmp_path):
        import multiprocessing as mp
        path = str(tmp_path / "lc_same.py")
        text = "# " + "x" * 200000 + "\n"
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(2) as pool:
            assert all(pool.map(_race, [(path, text, 20)] * 4))
        with open(path) as f:
            assert f.read() == text
        assert [p.name for p in tmp_path.iterdir()] == ["lc_same.py"]  # no temporary left behind

    def test_generated_source_is_readable():
        spec = lc.ir.resolve_op("sigmoid(A*x)*B")
        src = kernels.source(spec, "sum", True, (True, True))
        assert "def _fwd(" in src and "def _bwd_x(" in src and "def _bwd_w(" in src
        assert "BLOCK_M: tl.constexpr" in src
        compile(src, "<generated>", "exec")

    TCASES = [  # (d, x shape, weight (C, O/g, *k), stride, padding, output_padding, groups, dilation)
        (2, (1, 2, 4, 3), (2, 2, 3, 3), (2, 2), (1, 1), (1, 1), 1, (1, 1)),  # the upsampling layer
        (1, (2, 4, 4), (4, 1, 3), (2,), (1,), (0,), 2, (2,)),  # a phase no offset reaches
        (1, (1, 2, 3), (2, 2, 2), (3,), (2,), (1,), 1, (1,)),  # windows that miss the input
    ]

    @pytest.mark.parametrize("split", [False, True], ids=["phases", "split-borders"])
    @pytest.mark.parametrize("reduce", ["sum", "mean", "max", "logsumexp"])
    @pytest.mark.parametrize("case", TCASES, ids=lambda c: f"{c[0]}d-s{c[3]}")
    def test_transposed_runs_by_phases(case, reduce, split, monkeypatch):
        """conv_transpose on the triton kernels (one stride-1 call per output phase, no holes; with
        split, each phase's borders apart, as where the Gluon forward runs the interiors) against the
        float64 loop definition, forward and every gradient."""
        from lambdaconv import transpose
        from test_transpose import definition
        monkeypatch.setattr(transpose, "_gluon_takes_interiors", lambda call: split)
        d, xs, wsh, s, p, op_, g, dl = case
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(xs, generator=gen, dtype=torch.float64)
        ws = {"weight": torch.randn(wsh, generator=gen, dtype=torch.float64)}
        b = torch.randn(wsh[1] * g, generator=gen, dtype=torch.float64)
        leaves = [x.float().requires_grad_(), ws["weight"].float().requires_grad_(), b.float().requires_grad_()]
        fn = getattr(lc, f"conv_transpose{d}d")
        y = fn(leaves[0], "adder", {"weight": leaves[1]}, leaves[2], s, p, op_, g, dl, reduce=reduce,
               backend="triton")
        ref_in = [t.detach().double().requires_grad_() for t in leaves]
        r = definition(ref_in[0], "adder", {"weight": ref_in[1]}, ref_in[2], s, p, op_, g, dl, reduce)
        assert y.shape == r.shape and torch.equal(torch.isnan(y), torch.isnan(r))
        fin = torch.isfinite(r)
        assert rel_err(y.double()[fin], r[fin]) < 1e-5
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).masked_fill(~fin, 0)
        got = torch.autograd.grad(y, leaves, gy.float())
        want = torch.autograd.grad(r, ref_in, gy)
        for a, e in zip(got, want):
            assert rel_err(a.double(), e) < 1e-4

    # two-level morphology fused in triton kernels (backends/triton/twolevel_kernel.py)
    from test_two_level import GEO, GEOMETRIES, OPS, _inputs  # noqa: E402
    from unfold_definition import definition  # noqa: E402

    def _check_two_level(op, pair, geo, tol=1e-5, **sizes):
        from lambdaconv import twolevel
        d, x, w, b, kw = _inputs(geo, **sizes)
        leaves_r = [t.clone().requires_grad_() for t in (x, w, b)]
        ref = definition(leaves_r[0], {"W": leaves_r[1]}, {"y": OPS[op]}, pair, None, (), leaves_r[2], **kw)
        leaves = [t.float().requires_grad_() for t in (x, w, b)]
        assert twolevel.fused_triton(pair, lc.ir.resolve_op(op), leaves[0], "triton")
        y = CONV[d](leaves[0], op, {"W": leaves[1]}, leaves[2], reduce=pair, backend="triton", **kw)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        got = [y, *torch.autograd.grad(y, leaves, gy.float())]
        want = [ref, *torch.autograd.grad(ref, leaves_r, gy)]
        for name, a, r in zip(("output", "grad x", "grad W", "grad bias"), got, want):
            assert rel_err(a.double(), r) <= tol, f"{op} {pair}: {name}"

    @pytest.mark.parametrize("pair", [("max", "sum"), ("min", "mean"), ("max", "mean")], ids="-".join)
    @pytest.mark.parametrize("op", OPS)
    def test_two_level_fused_kernels(op, pair):
        """(max / min, sum / mean) in the fused triton kernels against the float64 definition,
        forward and every gradient (stride 2, groups, "ignore" padding)."""
        _check_two_level(op, pair, GEO)

    @pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: f"{g[0]}d-s{g[3]}-p{g[4]}-d{g[5]}-g{g[6]}-{g[7]}")
    def test_two_level_fused_kernels_geometries(geo):
        _check_two_level("x + W", ("max", "sum"), geo)

    def test_two_level_fused_backward_sums_over_chunks_of_row_tiles():
        """288 rows in 16-row tiles: the backward's programs take 9 tiles each (2 chunks), their
        weight-gradient sums carried over the tiles of a chunk before one atomic add."""
        from lambdaconv.backends.triton import twolevel_kernel
        assert twolevel_kernel.chunk_tiles(18, 1, 4, 1) == 9
        _check_two_level("-abs(x-W)", ("max", "sum"), (2, 12, 3, 1, 1, 1, 1, "zeros"))

    @pytest.mark.parametrize("geo,o", [((2, 6, 3, 1, 1, 1, 1, "zeros"), 5), ((1, 40, 33, 1, 16, 1, 1, "zeros"), 3),
                                       ((3, 4, 3, 1, 1, 1, 1, "reflect"), 20)],
                             ids=["5-filters", "33-taps-rolled", "3d-20-filters"])
    def test_two_level_fused_kernels_odd_sizes(geo, o):
        """Out channels that do not fill the tile (the weights' clamped columns) and more than 32
        taps (the tap loop not unrolled)."""
        _check_two_level("-abs(x-W)", ("min", "mean"), geo, o=o)

    def test_two_level_fused_kernels_ties_go_to_the_first_winner():
        """A constant input with W = 0: every tap ties; the gradient goes to the first winner, as the
        definition's torch.max."""
        x = torch.ones(1, 2, 5, 5, requires_grad=True)
        w = torch.zeros(3, 2, 3, 3, requires_grad=True)
        y = lc.conv2d(x, "x + W", {"W": w}, padding=1, reduce=("max", "sum"), backend="triton")
        xr, wr = (t.detach().double().requires_grad_() for t in (x, w))
        ref = definition(xr, {"W": wr}, {"y": lambda x, W: x + W}, ("max", "sum"), None, (), None, padding=1)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
        for a, r in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(ref, (xr, wr), gy.double())):
            assert torch.allclose(a.double(), r, rtol=0, atol=1e-5)
