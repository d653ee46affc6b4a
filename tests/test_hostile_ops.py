"""No op string can hang the planner or escape as an internal error; misspellings say what to do.
Each case runs in a child process with a hard timeout, so a regression fails instead of hanging CI."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import lambdaconv as lc
from lambdaconv.ir import PRESETS

from conftest import rel_err

# (op string, expected strategy or the ValueError's text)
PLANNED = {
    "x*W*9**9**9": "direct",  # the constant folds to inf, as torch computes it in float
    "x*W*2.0**1e10": "direct",
    "(x+A+B+C+D+E+F+G)**12": "direct",  # expansion over the planner's budget
    "sin(" * 22 + "x*W" + ")" * 22: "direct",
    "sin(" * 90 + "x*W" + ")" * 90: "direct",
}
REFUSED = {
    "x*W" + "+x" * 1000: "nests",
    "-" * 9000 + "x*W": "too long",
    "(" * 300 + "x*W" + ")" * 300: "nested",
}


def _child(code: str, timeout: float = 60.0) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.parametrize("text", list(PLANNED), ids=lambda t: t[:24])
def test_planner_is_bounded(text):
    got = _child(f"import lambdaconv as lc; print(lc.explain({text!r}).strategy)")
    assert got == PLANNED[text]


@pytest.mark.parametrize("text", list(REFUSED), ids=lambda t: t[:24])
def test_huge_strings_are_value_errors(text):
    with pytest.raises(ValueError, match=REFUSED[text]):
        lc.explain(text)


def test_deep_callable_runs():
    def op(x, W):
        s = x * W
        for _ in range(300):
            s = torch.sin(s)
        return s
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    assert lc.explain(op).strategy == "direct"
    y = lc.conv2d(x, op, {"W": w})
    assert rel_err(y, lc.conv2d(x, op, {"W": w}, backend="reference")) < 1e-12


def test_huge_constant_matches_reference():
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    y = lc.conv2d(x, "x*W*2.0**1e10", {"W": w})
    assert torch.isinf(y).any() or torch.isnan(y).any()
    assert rel_err(y, lc.conv2d(x, "x*W*2.0**1e10", {"W": w}, backend="reference")) == 0.0


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_typo_suggests_the_name(name):
    typo = name[:-1] if len(name) > 3 else name + "s"
    with pytest.raises(ValueError, match=f"did you mean '{name}'"):
        lc.explain(typo)


def test_builtin_max_says_torch_maximum():
    with pytest.raises(ValueError, match="torch.maximum"):
        lc.explain(lambda x, W: max(x, W))


def test_numpy_says_use_torch():
    with pytest.raises(ValueError, match="use torch functions"):
        lc.explain(lambda x, W: np.exp(x * W))


def test_explain_says_a_weights_only_term_duplicates_the_bias():
    assert "duplicates the bias" in str(lc.explain("A*x**2 + B*x + C"))
    assert "duplicates the bias" not in str(lc.explain("offset"))  # -A*B shares A with the x term
