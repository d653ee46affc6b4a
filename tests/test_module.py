"""lc.Conv1d/2d/3d: drop-in for nn.ConvNd, parameters per op weight, init, shapes, persistence."""
import copy
import io
import pickle

import pytest
import torch
from torch import nn

import lambdaconv as lc

from conftest import rel_err


def test_linear_layer_matches_nn_conv2d():
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, (3, 2), 2, 1, 1, 2, True, "reflect")
    layer = lc.Conv2d(4, 6, (3, 2), 2, 1, 1, 2, True, "reflect", op="linear")
    assert layer.weight.shape == ref.weight.shape and layer.bias.shape == ref.bias.shape
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 9, 8)
    assert rel_err(layer(x), ref(x)) < 1e-5


def test_parameters_named_after_the_op():
    layer = lc.Conv2d(3, 8, 3, op=lambda x, A, B: A * (x - B), shapes={"B": "filter"}, bias=False)
    names = dict(layer.named_parameters())
    assert set(names) == {"A", "B"}
    assert names["A"].shape == (8, 3, 3, 3) and names["B"].shape == (8, 1, 1, 1)
    assert layer(torch.randn(2, 3, 7, 7)).shape == (2, 8, 5, 5)


@pytest.mark.parametrize("d,cls", [(1, lc.Conv1d), (2, lc.Conv2d), (3, lc.Conv3d)])
def test_shapes_and_dims(d, cls):
    layer = cls(2, 4, 3, padding=1, op="quadratic", shapes={"A": "scalar", "B": (4, 1) + (3,) * d})
    assert layer.A.shape == () and layer.B.shape == (4, 1) + (3,) * d
    x = torch.randn((2, 2) + (5,) * d)
    y = layer(x)
    assert y.shape == (2, 4) + (5,) * d
    y.sum().backward()
    assert layer.A.grad.shape == () and layer.B.grad.shape == layer.B.shape


def test_init_options():
    layer = lc.Conv2d(4, 8, 3, op="A*x + B*x**2 + C",
                      init={"A": "zeros", "B": 0.25, "C": lambda t: torch.nn.init.constant_(t, -1.0)})
    assert torch.all(layer.A == 0) and torch.all(layer.B == 0.25) and torch.all(layer.C == -1)
    default = lc.Conv2d(4, 8, 3, op="adder")
    bound = 1 / (4 * 9) ** 0.5
    assert default.weight.abs().max() <= bound and default.weight.std() > bound / 4
    ones = lc.Conv2d(4, 8, 3, op="adder", init={"weight": "ones"})
    assert torch.all(ones.weight == 1)
    normal = lc.Conv2d(16, 16, 3, op="adder", init={"weight": "normal"})
    assert 0.8 < normal.weight.std() < 1.2
    uniform = lc.Conv2d(16, 16, 3, op="adder", init={"weight": "uniform"})
    assert uniform.weight.min() >= 0 and uniform.weight.max() <= 1


def test_state_dict_round_trip_and_deepcopy():
    a = lc.Conv2d(3, 5, 3, op=lambda x, A, B: torch.sigmoid(A * x) * B)
    b = lc.Conv2d(3, 5, 3, op=lambda x, A, B: torch.sigmoid(A * x) * B)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(a(x), b(x))
    c = copy.deepcopy(a)
    assert torch.equal(a(x), c(x))
    assert c.A is not a.A


@pytest.mark.parametrize("op", ["offset", "sigmoid(A*x)*B", "dilation"])
def test_string_and_preset_modules_pickle_whole(op):
    model = nn.Sequential(lc.Conv2d(3, 4, 3, padding=1, op=op, padding_mode="ignore"), nn.ReLU())
    x = torch.randn(1, 3, 5, 5)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(pickle.loads(pickle.dumps(model))(x), model(x))


def test_to_dtype_and_forward_dtype():
    layer = lc.Conv2d(3, 4, 3, op="adder").to(torch.float64)
    assert layer.weight.dtype == torch.float64
    assert layer(torch.randn(1, 3, 5, 5, dtype=torch.float64)).dtype == torch.float64
    half = lc.Conv2d(3, 4, 3, op="adder", dtype=torch.bfloat16)
    assert half(torch.randn(1, 3, 5, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_repr_and_explain():
    layer = lc.Conv2d(3, 4, 3, padding=1, op="offset", padding_mode="ignore")
    r = repr(layer)
    assert "op='offset'" in r and "padding_mode='ignore'" in r and "kernel_size=(3, 3)" in r
    assert layer.explain().strategy in ("decompose", "direct")
    assert "A*(x - B)" in str(layer.explain())


def test_channels_last_and_strided_inputs():
    layer = lc.Conv2d(4, 5, 3, padding=1, op="adder", backend="tiled")
    x = torch.randn(2, 4, 8, 8)
    y = layer(x)
    assert rel_err(layer(x.to(memory_format=torch.channels_last)), y) < 1e-6
    big = torch.randn(2, 8, 16, 8)
    assert rel_err(layer(big[:, ::2, ::2]), layer(big[:, ::2, ::2].contiguous())) < 1e-6


def test_trains():
    torch.manual_seed(0)
    layer = lc.Conv2d(1, 2, 3, op="offset", bias=False)
    target = torch.randn(4, 2, 4, 4)
    x = torch.randn(4, 1, 6, 6)
    opt = torch.optim.Adam(layer.parameters(), 0.05)
    first = None
    for _ in range(60):
        loss = (layer(x) - target).pow(2).mean()
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first


# Op weights named like the layer's attributes: a ValueError at construction, listing the names.
# The reserved set is read from a plain layer, so it is checked against one here, not a copied list.

def _plain_names():
    plain = lc.Conv2d(3, 4, 3, op=lambda x, A, B: A * (x - B), padding="same", bias=False, init={"A": "ones"})
    return {n for n in dir(plain) if not n.startswith("__")} - set(plain.weight_names)


@pytest.mark.parametrize("name", sorted(n for n in _plain_names() | {"bias"} if not n.startswith("_")))
@pytest.mark.parametrize("bias", [True, False])
def test_an_op_weight_named_like_a_layer_attribute_is_a_value_error(name, bias):
    op = eval(f"lambda x, {name}: x * {name}")  # noqa: S307 (the parameter name is the test's subject)
    with pytest.raises(ValueError, match=f"op weight name '{name}' would clash") as e:
        lc.Conv2d(3, 4, 3, op=op, bias=bias)
    assert "bias, dilation" in str(e.value) and "stride" in str(e.value)  # the list of reserved names


def test_reserved_names_cover_every_attribute_of_a_layer_and_of_nn_module():
    reserved = lc.nn.reserved_names()
    assert _plain_names() | {"bias"} <= reserved and set(dir(nn.Module())) <= reserved
    assert "weight" not in reserved  # the presets' weight name
    layer = lc.Conv2d(3, 4, 3, op=lambda x, weight, scale: scale * x * weight, bias=False)
    assert {n for n, _ in layer.named_parameters()} == {"weight", "scale"} and layer(torch.randn(1, 3, 5, 5)).shape \
        == (1, 4, 3, 3)


def test_an_op_weight_named_like_a_method_of_a_subclass_is_a_value_error():
    class Scaled(lc.Conv2d):
        def scale(self):
            return 2.0

    with pytest.raises(ValueError, match="'scale' would clash"):
        Scaled(3, 4, 3, op=lambda x, weight, scale: scale * x * weight)
