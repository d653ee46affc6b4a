"""The kernel printers (backends/triton/codegen.py): complete over the IR's op table, one per dialect."""
import re

import pytest

pytest.importorskip("triton")

from lambdaconv.backends.triton import codegen  # noqa: E402
from lambdaconv.ir.expr import const, inp, node, weight  # noqa: E402
from lambdaconv.ir.ops import OPS  # noqa: E402

PRINTERS = [codegen.TritonPrinter, codegen.GluonPrinter]


def _expr(name):
    args = [inp(), weight("W"), node("gt", inp(), weight("W"))][:OPS[name].arity]
    if name == "where":
        args = [node("gt", inp(), weight("W")), inp(), weight("W")]
    if name == "pow":
        args = [inp(), weight("W")]  # a tensor exponent: the general helper
    return node(name, *args)


def test_every_ir_op_has_a_printer_entry():
    assert set(OPS) == set(codegen.OPS_SRC)
    assert set(codegen.OP_HELPERS) <= set(OPS)
    assert set(codegen.OP_HELPERS.values()) <= codegen.TritonPrinter.HELPERS
    for h in codegen.TritonPrinter.HELPERS:  # the portable modules define what they may call
        assert f"def {h}(" in codegen.PRELUDE


@pytest.mark.parametrize("printer", PRINTERS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("name", sorted(OPS))
def test_each_dialect_prints_each_op_or_says_why(printer, name):
    e = _expr(name)
    if e.op != name:  # folded by the builders (cannot happen with these leaves)
        pytest.skip("folded")
    needs = codegen.OP_HELPERS.get(name) or ("_pow" if name == "pow" else None)
    if needs and needs not in printer.HELPERS:
        with pytest.raises(codegen.Unprintable, match=needs):
            codegen.emit([e], "xv", {"W": "w_0"}, 0, printer=printer)
        return
    code, (out,) = codegen.emit([e], "xv", {"W": "w_0"}, 4, printer=printer)
    other = {"tl": "gl", "gl": "tl"}[printer.LANG]
    # the dialect's own module only (NaN propagation is tl's enum in both)
    assert not re.search(rf"\b{other}\.(?!PropagateNan)", code), code
    assert out in code


def test_constant_exponents_print_without_helpers():
    for printer in PRINTERS:
        code, _ = codegen.emit([node("pow", inp(), const(3.0))], "xv", {}, 0, printer=printer)
        assert "_pow" not in code and "xv * " in code
