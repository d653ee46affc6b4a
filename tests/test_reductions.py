"""The reduction records (reductions.py): their laws, and a new record picked up everywhere."""
import pytest
import torch

import lambdaconv as lc
from lambdaconv import reductions
from lambdaconv.backends import registry
from lambdaconv.backends.triton import available
from lambdaconv.functional import prepare

from conftest import check_backend, make_inputs

RECORDS = reductions.all_records()
DIALECTS = {"triton": reductions.TritonCode, "gluon": reductions.GluonCode, "gluon_staged": reductions.StagedCode}


@pytest.mark.parametrize("r", RECORDS, ids=lambda r: r.name)
def test_record_laws(r):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 7, generator=g, dtype=torch.float64)
    count = torch.full((5,), 7)
    assert r.backward in reductions.BACKWARD_KINDS
    if r.backward != "count":  # the identity is neutral (a mean counts it as a tap)
        padded = torch.cat([v, torch.full((5, 1), r.identity, dtype=torch.float64)], 1)
        assert torch.allclose(r.reference(padded, -1, count + 1), r.reference(v, -1, count))
    if r.negated is not None:  # R(-v) = -R'(v): kernels move a root negation out of the loop
        assert torch.equal(r.reference(-v, -1, count), -reductions.get(r.negated).reference(v, -1, count))
    if r.select is not None:
        assert torch.equal(r.select(v, -1).values, r.reference(v, -1, count))
    assert r.saves == {"select": "winner", "softmax": "value"}.get(r.backward)
    for dialect, code in r.code.items():
        assert isinstance(code, DIALECTS[dialect]), dialect


def test_bad_records_are_refused():
    with pytest.raises(ValueError, match="backward must be one of"):
        reductions.Reduction("x", 0.0, lambda t, d, c: t.sum(d), "product")
    with pytest.raises(ValueError, match="select reduction names"):
        reductions.Reduction("x", 0.0, lambda t, d, c: t.amax(d), "select")


@pytest.fixture
def total():
    """A new reduction registered for one test: sum under another name, with no kernel code."""
    rec = reductions.register(reductions.Reduction("total", 0.0, lambda t, dim, count: t.sum(dim), "uniform",
                                                   negated="total", doc="sum, for the tests"))
    yield rec
    del reductions._REGISTRY["total"]


def _backends(op, reduce):
    x, ws, b = make_inputs(2, 2, 4, (6, 6), {"weight": (3, 4, 3, 3)})
    call = prepare(2, x, op, ws, b, 1, 1, 1, 1, reduce, "zeros", "auto")[3]
    return {n: registry.get(n).unsupported(call) for n in registry.names()[1:]}


@pytest.mark.parametrize("op", ["linear", "adder"])
def test_a_new_record_runs_everywhere(total, op):
    plan = lc.explain(op, "total")
    assert plan.strategy == ("decompose" if op == "linear" else "direct")
    support = _backends(op, "total")
    if "triton" in support and available():  # no kernel code: "auto" falls back
        assert "no triton code for reduce 'total'" in support["triton"]
    for name in [n for n, why in support.items() if why is None and n != "reference"]:
        x, ws, b = make_inputs(2, 2, 4, (6, 6), {"weight": (3, 4, 3, 3)})
        check_backend(name, 2, x, op, ws, b, reduce="total", padding=1)
        y = lc.conv2d(x, op, ws, b, padding=1, reduce="total", backend=name)
        assert torch.allclose(y, lc.conv2d(x, op, ws, b, padding=1, reduce="sum", backend=name))
