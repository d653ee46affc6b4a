"""Bad input fails before any kernel runs, with a message that names the problem; NaN propagates."""
import math

import pytest
import torch

import lambdaconv as lc
from lambdaconv.backends import registry

X = torch.randn(2, 4, 6, 6)
W = {"weight": torch.randn(3, 4, 3, 3)}


def raises(exc, match, fn, *a, **kw):
    with pytest.raises(exc, match=match):
        fn(*a, **kw)


def test_channel_mismatch_names_both_numbers():
    with pytest.raises(ValueError, match="channels") as e:
        lc.conv2d(torch.randn(2, 5, 6, 6), "adder", W)
    assert "4" in str(e.value) and "5" in str(e.value)


def test_missing_and_unused_weights_are_named():
    raises(ValueError, "'B'", lc.conv2d, X, "A*(x-B)", {"A": W["weight"]})
    raises(ValueError, "'C'", lc.conv2d, X, "A*x", {"A": W["weight"], "C": W["weight"]})


@pytest.mark.parametrize("kw,match", [
    (dict(reduce="median"), "reduce"), (dict(padding_mode="mirror"), "padding_mode"),
    (dict(backend="cuda-magic"), "backend"), (dict(groups=3), "groups"), (dict(padding="full"), "padding"),
    (dict(stride=0), "stride"), (dict(padding=-1), "padding"), (dict(padding="same", stride=2), "same"),
    (dict(padding=(1, 2, 3)), "padding"),
])
def test_bad_options(kw, match):
    raises(ValueError, match, lc.conv2d, X, "adder", W, **kw)


def test_wrong_types():
    raises(TypeError, "input", lc.conv2d, [[1.0]], "adder", W)
    raises(TypeError, "weights", lc.conv2d, X, "adder", [W["weight"]])
    raises(TypeError, "op", lc.conv2d, X, 3, W)
    raises(TypeError, "reduce", lc.conv2d, X, "adder", W, reduce=1)
    raises(TypeError, "weight 'weight'", lc.conv2d, X, "adder", {"weight": "w"})


def test_wrong_rank_and_dtype():
    raises(ValueError, "4-D", lc.conv2d, torch.randn(6, 6), "adder", W)
    raises(ValueError, "4-D", lc.conv2d, torch.randn(1, 2, 4, 6, 6), "adder", W)
    raises(ValueError, "dtype", lc.conv2d, X.to(torch.int64), "adder", W)
    raises(ValueError, "5 dims", lc.conv2d, X, "adder", {"weight": torch.randn(1, 3, 4, 3, 3)})


def test_groups_must_divide_channels():
    raises(ValueError, "groups", lc.conv2d, torch.randn(1, 3, 6, 6), "adder", {"weight": torch.randn(4, 1, 3, 3)},
           groups=2)


def test_kernel_larger_than_padded_input():
    raises(ValueError, "larger than the padded input", lc.conv2d, torch.randn(1, 4, 2, 2), "adder", W)
    raises(ValueError, "larger than the padded input", lc.conv2d, torch.randn(1, 4, 3, 3), "adder", W, dilation=2)


def test_weights_that_do_not_broadcast():
    raises(ValueError, "broadcast", lc.conv2d, X, "A*(x-B)", {"A": torch.randn(3, 4, 3, 3), "B": torch.randn(2, 4, 3, 3)})


def test_untraceable_ops_name_the_problem():
    raises(ValueError, "control flow", lc.conv2d, X, lambda x, weight: x if x > 0 else weight, W)
    raises(ValueError, "erfinv", lc.conv2d, X, lambda x, weight: torch.erfinv(x) * weight, W)
    raises(ValueError, "hypot", lc.conv2d, X, "hypot(x, weight)", W)
    raises(ValueError, "math.exp", lc.conv2d, X, lambda x, weight: math.exp(x) * weight, W)


@pytest.mark.parametrize("s", ["__import__('os').system('true')", "x.__class__", "[x][0]*weight", "weight if x else x",
                               "lambda: x", "open('f')", "(lambda y: y)(x)*weight", "x; weight"])
def test_strings_are_parsed_never_evaluated(s):
    raises(ValueError, "not allowed|unsupported|cannot parse", lc.conv2d, X, s, W)


def test_module_init_and_shapes_must_name_parameters():
    raises(ValueError, "'C'", lc.Conv2d, 4, 3, 3, op="offset", init={"C": "zeros"})
    raises(ValueError, "'weight'", lc.Conv2d, 4, 3, 3, op="offset", shapes={"weight": "filter"})
    raises(ValueError, "init", lc.Conv2d, 4, 3, 3, op="offset", init={"A": "glorot"})
    raises(ValueError, "groups", lc.Conv2d, 4, 3, 3, op="offset", groups=2)
    raises(ValueError, "padding_mode", lc.Conv2d, 4, 3, 3, op="offset", padding_mode="mirror")


def test_channel_mismatch_in_a_module():
    layer = lc.Conv2d(4, 3, 3, op="adder")
    raises(ValueError, "channels", layer, torch.randn(1, 5, 6, 6))


@pytest.mark.parametrize("op,reduce", [("dilation", "max"), ("erosion", "min"), ("adder", "sum"),
                                       ("offset", "logsumexp"), ("adder", "mean")])
@pytest.mark.parametrize("backend", registry.names())
def test_nan_propagates_and_stays_in_its_batch_item(op, reduce, backend):
    """A NaN input reaches every output whose window holds it, and no other; its gradient (max /
    min: the NaN tap wins) is the reference's."""
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    x[1, 2, 3, 3] = float("nan")
    ws = {n: torch.randn(3, 4, 3, 3, dtype=torch.float64) for n in lc.explain(op).weights}
    xg = x.clone().requires_grad_()
    try:
        y = lc.conv2d(xg, op, ws, padding=1, reduce=reduce, backend=backend)
    except ValueError as err:
        if "cannot run this convolution" in str(err):
            pytest.skip(str(err).splitlines()[0])
        raise
    assert torch.isnan(y[1, :, 2:5, 2:5]).all()  # every output whose window holds the NaN
    assert not torch.isnan(y[0]).any() and not torch.isnan(y[2]).any()
    assert torch.isnan(y[1]).sum() == 3 * 9
    if reduce in ("max", "min"):
        xr = x.clone().requires_grad_()
        r = lc.conv2d(xr, op, ws, padding=1, reduce=reduce, backend="reference")
        gy = torch.randn(y.shape, dtype=torch.float64)
        (a,), (b,) = torch.autograd.grad(y, [xg], gy), torch.autograd.grad(r, [xr], gy)
        assert torch.allclose(a, b, atol=1e-12, equal_nan=True)


def test_empty_batch_gives_empty_output_and_gradients():
    x = torch.randn(0, 4, 6, 6, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, requires_grad=True)
    y = lc.conv2d(x, "adder", {"weight": w}, padding=1)
    assert y.shape == (0, 3, 6, 6)
    gx, gw = torch.autograd.grad(y.sum(), [x, w])
    assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(w))


def test_error_message_carries_the_call_context():
    with pytest.raises(ValueError) as e:
        lc.conv2d(X, "A*(x-B)", {"A": W["weight"]})
    assert "A*(x-B)" in str(e.value) and "(2, 4, 6, 6)" in str(e.value)


def test_error_context_shows_shapes_never_values():
    # a tensor passed where the weights dict goes: its shape in the message, not its repr
    with pytest.raises(TypeError, match="dict") as e:
        lc.conv2d(X, "adder", W["weight"])
    assert "Tensor (3, 4, 3, 3)" in str(e.value) and len(str(e.value)) < 300
