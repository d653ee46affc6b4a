"""Odd tensors behave as torch's convolutions do: zero input channels (an empty output), a zero-size
kernel or zero out_channels (a ValueError where torch fails in its backend), meta tensors (shapes
and dtypes, forward and backward, every op), and a bias of the wrong dtype, layout or device."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import lambdaconv as lc
from lambdaconv import backends
from lambdaconv.backends import registry
from lambdaconv.functional import prepare
from lambdaconv.ir import REDUCES, resolve_op
from lambdaconv.ir.spec import PRESETS
from lambdaconv.plan import plan_for

from conftest import TOL, rel_err

CONV = {1: lc.conv1d, 2: lc.conv2d, 3: lc.conv3d}
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
OPS = sorted(PRESETS) + ["sigmoid(A*x)*B"]  # every preset, and a direct op with two weights


def names(op):
    return resolve_op(op).weight_names


def call(fn, *a, **kw):
    """fn(*a, **kw), skipping the case when a named backend cannot run it here (triton on CPU)."""
    try:
        return fn(*a, **kw)
    except ValueError as err:
        if "cannot run this convolution" in str(err):
            pytest.skip(str(err).splitlines()[0])
        raise


# ------------------------------------------------------------------------------ zero input channels

@pytest.mark.parametrize("backend", registry.names())
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("op", OPS)
def test_zero_input_channels_give_torchs_empty_output_and_gradients(op, reduce, backend):
    x = torch.randn(2, 0, 8, 8, requires_grad=True)
    ws = {n: torch.randn(4, 0, 3, 3, requires_grad=True) for n in names(op)}
    b = torch.randn(4, requires_grad=True)
    y = call(lc.conv2d, x, op, ws, b, stride=2, padding=1, reduce=reduce, backend=backend)
    tw = torch.randn(4, 0, 3, 3, requires_grad=True)
    ty = F.conv2d(x, tw, b, stride=2, padding=1)  # torch: (N, 0, *out), whatever out_channels is
    assert y.shape == ty.shape == (2, 0, 4, 4) and y.dtype == ty.dtype
    leaves = [x, *ws.values(), b]
    got = torch.autograd.grad(y.sum(), leaves)
    want = torch.autograd.grad(ty.sum(), [x, tw, b])
    assert all(torch.equal(g, torch.zeros_like(t)) for g, t in zip(got, leaves))
    assert torch.equal(got[0], want[0]) and torch.equal(got[-1], want[-1])  # x: empty; bias: zeros


@pytest.mark.parametrize("d", [1, 2, 3])
def test_zero_input_channels_in_every_dimension_with_groups_and_broadcast_weights(d):
    x = torch.randn((2, 0) + (6,) * d)
    for wshape in [(4, 0) + (3,) * d, (4, 1) + (3,) * d, ()]:  # full, broadcast over channels, scalar
        w = torch.randn(wshape) if wshape else 1.0
        ws = {"weight": w} if wshape else {"weight": torch.randn((4, 1) + (3,) * d), "A": w}
        op = "adder" if wshape else "A*abs(x-weight)"
        y = CONV[d](x, op, ws, groups=2)
        assert y.shape == TORCH_CONV[d](x, torch.randn((4, 0) + (3,) * d), groups=2).shape == (2, 0) + (4,) * d


def test_zero_input_channels_unbatched_and_empty_batch():
    w = {"weight": torch.randn(4, 0, 3, 3)}
    assert lc.conv2d(torch.randn(0, 8, 8), "dilation", w).shape == F.conv2d(torch.randn(0, 8, 8),
                                                                              w["weight"]).shape == (0, 6, 6)
    assert lc.conv2d(torch.randn(0, 0, 8, 8), "dilation", w).shape == (0, 0, 6, 6)


@pytest.mark.parametrize("op", OPS)
def test_a_zero_channel_layer_builds_with_a_warning_and_runs_as_nn_conv2d(op):
    with pytest.warns(UserWarning, match="zero-element"):
        torch.nn.Conv2d(0, 4, 3)
    with pytest.warns(UserWarning, match="output has 0 channels"):
        layer = lc.Conv2d(0, 4, 3, padding=1, op=op)
    x = torch.randn(2, 0, 8, 8)
    assert layer(x).shape == (2, 0, 8, 8)
    assert all(torch.equal(p, torch.zeros_like(p)) for p in layer.parameters())  # no uninitialized memory


# ------------------------------------------------------------ zero-size kernel, zero out_channels

@pytest.mark.parametrize("backend", registry.names())
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kernel", [(0, 0), (0, 3), (3, 0)])
def test_zero_size_kernel_is_a_value_error(kernel, op, backend):
    ws = {n: torch.randn((4, 3) + kernel) for n in names(op)}
    with pytest.raises(ValueError, match="zero-size"):
        lc.conv2d(torch.randn(2, 3, 8, 8), op, ws, padding=1, backend=backend)
    with pytest.raises(RuntimeError):  # what torch does: a oneDNN / cuDNN failure
        F.conv2d(torch.randn(2, 3, 8, 8), torch.randn((4, 3) + kernel))


@pytest.mark.parametrize("op", OPS)
def test_zero_out_channels_is_a_value_error(op):
    ws = {n: torch.randn(0, 3, 3, 3) for n in names(op)}
    with pytest.raises(ValueError, match="out_channels = 0"):
        lc.conv2d(torch.randn(2, 3, 8, 8), op, ws)
    with pytest.raises(RuntimeError, match="at least 1"):
        F.conv2d(torch.randn(2, 3, 8, 8), torch.randn(0, 3, 3, 3))


@pytest.mark.parametrize("op", OPS)
def test_zero_spatial_size_as_torch(op):
    ws = {n: torch.randn(4, 3, 1, 1) for n in names(op)}
    with pytest.raises(ValueError, match="spatial size"):
        lc.conv2d(torch.randn(2, 3, 0, 8), op, ws, padding=1)
    with pytest.raises(RuntimeError, match="zero batch or zero channel"):
        F.conv2d(torch.randn(2, 3, 0, 8), torch.randn(4, 3, 1, 1), padding=1)
    x = torch.randn(0, 3, 0, 8)  # an empty batch: torch allows it, and so do we
    assert lc.conv2d(x, op, ws, padding=1).shape == F.conv2d(x, torch.randn(4, 3, 1, 1), padding=1).shape


@pytest.mark.parametrize("args", [(3, 4, 0), (3, 4, (0, 3)), (3, 0, 3), (0, 4, 0)])
def test_a_layer_that_cannot_run_builds_with_a_warning_as_nn_conv2d_and_its_forward_raises(args):
    with pytest.warns(UserWarning):
        torch.nn.Conv2d(*args)
    with pytest.warns(UserWarning, match="forward raises"):
        layer = lc.Conv2d(*args, op="adder")
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    with pytest.raises(ValueError, match="zero-size|out_channels = 0"):
        layer(torch.randn(2, args[0], 8, 8))


def test_negative_sizes_in_a_layer_are_value_errors():
    for args, match in [((3, 4, -1), "kernel_size"), ((-1, 4, 3), "in_channels"), ((3, -4, 3), "out_channels")]:
        with pytest.raises(ValueError, match=match):
            lc.Conv2d(*args, op="adder")


def test_a_plain_layer_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lc.Conv2d(3, 4, 3, op="adder")


# ------------------------------------------------------------------------------------------- meta

@pytest.mark.parametrize("backend", registry.names())
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("op", OPS)
def test_meta_tensors_give_the_shapes_and_dtypes_of_a_real_call(op, reduce, backend):
    kw = dict(stride=(1, 2), padding=1, dilation=(2, 1), reduce=reduce, backend=backend)

    def run(device, dtype):
        x = torch.randn(2, 3, 9, 8, dtype=dtype, device=device, requires_grad=True)
        ws = {n: torch.randn(4, 3, 3, 3, dtype=torch.float32, device=device, requires_grad=True)
              for n in names(op)}
        b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)  # cast, as documented
        y = call(lc.conv2d, x, op, ws, b, **kw)
        grads = torch.autograd.grad(y.sum(), [x, *ws.values(), b])
        return [(t.shape, t.dtype, t.device.type) for t in (y, *grads)]

    for dtype in (torch.float32, torch.float16):
        meta, cpu = run("meta", dtype), run("cpu", dtype)
        assert meta == [(s, dt, "meta") for s, dt, _ in cpu]


@pytest.mark.parametrize("op", OPS)
def test_a_layer_initialised_on_meta_runs_there_then_materialises(op):
    layer = lc.Conv2d(3, 4, 3, padding=1, op=op, device="meta")
    x = torch.randn(2, 3, 8, 8, device="meta", requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert (y.shape, y.device.type) == ((2, 4, 8, 8), "meta") and x.grad.shape == x.shape
    assert all(p.grad.shape == p.shape and p.grad.is_meta for p in layer.parameters())
    layer.to_empty(device="cpu")  # FSDP-style: allocate, then initialise for real
    layer.reset_parameters()
    z = layer(torch.randn(2, 3, 8, 8))
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()


@pytest.mark.parametrize("op", [op for op in OPS if plan_for(resolve_op(op), PRESETS.get(op, (0, "sum"))[1])
                                .strategy == "decompose"])
@pytest.mark.parametrize("padding_mode", ["zeros", "ignore"])
def test_the_decompose_backend_itself_runs_on_meta(op, padding_mode):
    # the compile route runs a backend on the tensors it is given, with no meta short-circuit;
    # decompose used to ask autocast about the meta device, which torch refuses
    x, ws = torch.randn(2, 3, 8, 8, device="meta"), {n: torch.randn(4, 3, 3, 3, device="meta") for n in names(op)}
    xb, b, ws, c, _ = prepare(2, x, op, ws, None, 1, 1, 1, 1, None, padding_mode, "decompose")
    y = backends.registry.get("decompose").run(xb, b, ws, c)
    assert (y.shape, y.dtype, y.device.type) == ((2, 4, 8, 8), torch.float32, "meta")


# ------------------------------------------------------------------------------------------- bias

@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64, torch.complex128])
def test_a_bias_of_a_non_floating_dtype_is_a_value_error(dtype, op):
    ws = {n: torch.randn(4, 3, 3, 3) for n in names(op)}
    with pytest.raises(ValueError, match=f"bias has dtype {dtype}"):
        lc.conv2d(torch.randn(2, 3, 8, 8), op, ws, torch.ones(4, dtype=dtype))
    with pytest.raises(RuntimeError, match="bias type"):  # torch refuses it too
        F.conv2d(torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.ones(4, dtype=dtype))


@pytest.mark.parametrize("op", OPS)
def test_a_bias_on_another_device_or_of_another_layout_is_a_value_error(op):
    x, ws = torch.randn(2, 3, 8, 8), {n: torch.randn(4, 3, 3, 3) for n in names(op)}
    with pytest.raises(ValueError, match="bias is on meta but the input is on cpu"):
        lc.conv2d(x, op, ws, torch.ones(4, device="meta"))
    with pytest.raises(ValueError, match="bias must be a dense"):
        lc.conv2d(x, op, ws, torch.ones(4).to_sparse())
    with pytest.raises(ValueError, match="weight .* must be a dense"):
        lc.conv2d(x, op, {**ws, names(op)[0]: ws[names(op)[0]].to_sparse()})
    with pytest.raises(ValueError, match="input must be a dense"):
        lc.conv2d(x.to_sparse(), op, ws)


@pytest.mark.parametrize("backend", registry.names())
@pytest.mark.parametrize("op", OPS)
def test_a_bias_of_another_floating_dtype_is_cast(op, backend):
    x, ws = torch.randn(2, 3, 8, 8), {n: torch.randn(4, 3, 3, 3) for n in names(op)}
    b = torch.randn(4, dtype=torch.float64)
    got = call(lc.conv2d, x, op, ws, b, padding=1, backend=backend)
    want = lc.conv2d(x.double(), op, {n: w.double() for n, w in ws.items()}, b, padding=1, backend="reference")
    assert got.dtype == torch.float32 and rel_err(got, want) < TOL[torch.float32]


# ------------------------------------------------------------------------------ strided weights
@pytest.mark.parametrize("backend", registry.names())
@pytest.mark.parametrize("reduce", [r for r in REDUCES if r in ("max", "min", "sum")])
def test_a_non_contiguous_weight_gets_its_gradient(reduce, backend):
    """A weight stored transposed (a 1x1 kernel whose (O, C) view is not contiguous) gives the same
    output and gradients as its contiguous copy (max / min scatter into the weight's gradient by
    flat index; sum for contrast)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    base = torch.randn(3, 4, 1, 1, generator=gen, dtype=torch.float64)
    grads = []
    for w in (base.transpose(0, 1), base.transpose(0, 1).contiguous()):
        w = w.detach().requires_grad_()
        xg = x.clone().requires_grad_()
        y = call(lc.conv2d, xg, "adder", {"weight": w}, reduce=reduce, backend=backend)
        grads.append((y, *torch.autograd.grad(y, (xg, w), torch.ones_like(y))))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-12)
