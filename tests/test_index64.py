"""The triton kernels' 64-bit index path and folded grids (issue 15, item 9), on CPU.

Tensors of more than 2**31 elements need 64-bit index arithmetic (tuning.index_flags sets the I64
constexpr from the sizes), and grids whose y or z would pass CUDA's 65535 are launched folded into
x (FOLD). Neither size fits a CPU test, so the thresholds are lowered here: the 64-bit and folded
code then runs on small tensors under TRITON_INTERPRET=1 and is checked against the float64
reference. tests/gpu/test_huge_gpu.py runs the real sizes on a GPU.
"""
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))

from lambdaconv.backends.triton import tuning  # noqa: E402
from lambdaconv.geometry import make_geometry  # noqa: E402


def _geometry(x_shape, w_shape, groups=1, padding=1):
    return make_geometry(len(x_shape) - 2, x_shape, w_shape, 1, padding, 1, groups, "zeros")


def test_index_flags_follow_the_sizes():
    # the input, 32 * 8192 * 8200 > 2**31 elements: 64-bit indices
    assert tuning.index_flags(_geometry((1, 32, 8192, 8200), (2, 32, 3, 3))) == (True, False)
    # an output of more than 2**31 elements from a small input
    assert tuning.index_flags(_geometry((1, 2, 8192, 8200), (32, 2, 3, 3))) == (True, False)
    # common sizes and a batch above 65535 stay on the 32-bit path, unfolded (the batch is in x)
    assert tuning.index_flags(_geometry((16, 64, 56, 56), (64, 64, 3, 3))) == (False, False)
    assert tuning.index_flags(_geometry((70000, 4, 4, 4), (8, 4, 3, 3))) == (False, False)
    # depthwise with 8192 channels and 3x3 taps: the weight gradients' grid y (groups x taps) is 73728
    assert tuning.index_flags(_geometry((2, 8192, 16, 16), (8192, 1, 3, 3), groups=8192)) == (False, True)


def test_fold_and_split_limits():
    assert tuning.fold((5, 7, 3), False) == (5, 7, 3)
    assert tuning.fold((5, 7, 70000), True) == (5 * 7 * 70000, 1, 1)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        tuning.fold((2 ** 20, 2 ** 11, 2), True)
    assert tuning.max_splits(10, False) == tuning.GRID_YZ
    assert tuning.max_splits(2 ** 30, False) == 1  # the partial sums stay 32-bit indexable
    assert tuning.max_splits(2 ** 30, True) == tuning.GRID_YZ


from conftest import run_interpreted  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":

    def test_interpreted_suite(tmp_path):
        run_interpreted(__file__, cache=tmp_path / "cache", args=("-k", "interpreted"), all_ran=True)

else:
    sys.path.insert(0, HERE)
    from conftest import check_backend, make_inputs  # noqa: E402

    from lambdaconv.backends.triton import function  # noqa: E402

    def _w(o, cg, k, d, names=("weight",)):
        return {n: (o, cg) + (k,) * d for n in names}

    CASES = [
        # (id, d, op, reduce, weights, conv kwargs, settings)
        ("adder-pad-bias", 2, "adder", None, _w(3, 2, 3, 2), dict(padding=1), {}),
        ("adder-outer-gw-stride", 2, "adder", None, _w(3, 2, 3, 2), dict(padding=2, stride=2, dilation=2),
         {"triton_gw": "outer"}),
        ("dilation-max", 2, "dilation", None, _w(3, 2, 3, 2), dict(padding=1), {}),
        ("erosion-min-ignore", 2, "erosion", None, _w(3, 2, 3, 2), dict(padding=1, padding_mode="ignore"), {}),
        ("logsumexp", 2, "x+weight", "logsumexp", _w(3, 2, 3, 2), dict(padding=1), {}),
        ("mean-ignore-groups", 2, "adder", "mean", _w(4, 1, 3, 2), dict(padding=1, groups=2,
                                                                         padding_mode="ignore"), {}),
        ("sigmoid-3d", 3, "sigmoid(A*x)*B", None, _w(2, 2, 2, 3, ("A", "B")), dict(padding=1), {}),
    ]

    @pytest.mark.parametrize("i64,fold", [(True, False), (False, True), (True, True)],
                             ids=["i64", "fold", "i64-fold"])
    @pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
    def test_interpreted_against_reference(case, i64, fold, monkeypatch, lc_settings):
        _, d, op, reduce, wshapes, kw, env = case
        if env:
            lc_settings(**env)
        if i64:
            monkeypatch.setattr(tuning, "INDEX_LIMIT", 0)
        if fold:
            monkeypatch.setattr(tuning, "GRID_YZ", 1)
        # the flags are memoized per geometry with the kernels' other constexprs
        monkeypatch.setattr(function, "_CONSTS", {})
        monkeypatch.setattr(function, "_PLANS", {})
        size = (4,) * d if d == 3 else (6, 7)
        c = max(s[1] for s in wshapes.values()) * kw.get("groups", 1)
        x, ws, b = make_inputs(d, 2, c, size, wshapes, dtype=torch.float32, bias=True)
        check_backend("triton", d, x, op, ws, b, reduce=reduce, **kw)
        flags = {(k["I64"], k["FOLD"]) for k in function._CONSTS.values()}
        assert flags == {(i64, fold)}, flags  # the kernels ran with the path under test
