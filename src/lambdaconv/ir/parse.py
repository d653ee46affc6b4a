"""Parse a string op ("A*(x-B)", "-abs(x-W)") into the IR. Never eval'd: the AST is walked and
only numbers, names, arithmetic, comparisons and whitelisted function calls are accepted."""
from __future__ import annotations

import ast
import math

from .builders import call
from .expr import as_expr, inp, node, weight

_BIN = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow"}
_CMP = {ast.Gt: "gt", ast.GtE: "ge", ast.Lt: "lt", ast.LtE: "le", ast.Eq: "eq", ast.NotEq: "ne"}
_CONSTS = {"pi": math.pi, "e": math.e}
_MODULES = ("torch", "F", "np", "math")  # torch.abs(x), F.relu(x) are spelled as their function
# Bounds that keep any string, however hostile, from costing more than milliseconds to parse: an
# op is a formula of a few dozen characters; a config file must not be able to hang a job.
MAX_LENGTH = 4000
MAX_DEPTH = 100  # nesting of the syntax tree (a sum of n terms nests n deep)


def parse_string(text: str, require_x: bool = True) -> tuple:
    """(expr, weight_names) for a string op; the input is `x`, weights in order of appearance.
    require_x=False: an expression that may leave x out (a derivative given with grad=)."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"op string is too long ({len(text)} characters, at most {MAX_LENGTH})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"cannot parse op {_short(text)}: {err.msg}") from None
    except (RecursionError, MemoryError):  # CPython's parser gives up on deep nesting this way
        raise ValueError(f"op string {_short(text)} nests too deeply to parse") from None
    depth = _depth(tree.body)
    if depth > MAX_DEPTH:
        raise ValueError(f"op string {_short(text)} nests {depth} levels deep (at most {MAX_DEPTH}): "
                         "write long sums as a callable op or split them into terms")
    # weights as written, in order of appearance, even where folding removed one: where(1 > 0, x, B)
    # still has the parameter B, as a callable keeps every parameter of its signature
    seen = []
    expr = as_expr(_walk(tree.body, text, seen))
    if require_x and "x" not in seen:
        raise ValueError(f"op {text!r} does not use the input `x`")
    return expr, tuple(n for n in seen if n != "x")


def _short(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:60]) + f"... ({len(text)} characters)"


def _depth(root: ast.AST) -> int:
    """Depth of the syntax tree, iteratively (the walk below recurses, so it must be bounded first)."""
    best, stack = 0, [(root, 1)]
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        if d <= MAX_DEPTH:  # past the bound the exact depth does not matter
            stack.extend((c, d + 1) for c in ast.iter_child_nodes(n))
    return best


def _walk(n: ast.AST, text: str, seen: list):
    if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
        return as_expr(n.value)
    if isinstance(n, ast.Name):
        if n.id not in seen and n.id not in _CONSTS:
            seen.append(n.id)
        if n.id == "x":
            return inp("x")
        if n.id in _CONSTS:
            return as_expr(_CONSTS[n.id])
        if not n.id.isidentifier() or n.id.startswith("_"):
            raise ValueError(f"op {text!r}: name {n.id!r} is not allowed")
        return weight(n.id)
    if isinstance(n, ast.BinOp) and type(n.op) in _BIN:
        return node(_BIN[type(n.op)], _walk(n.left, text, seen), _walk(n.right, text, seen))
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
        v = _walk(n.operand, text, seen)
        return node("neg", v) if isinstance(n.op, ast.USub) else v
    if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _CMP:
        return node(_CMP[type(n.ops[0])], _walk(n.left, text, seen), _walk(n.comparators[0], text, seen))
    if isinstance(n, ast.Call):
        fname = _function_name(n.func, text)
        args = tuple(_walk(a, text, seen) for a in n.args)
        kwargs = {k.arg: _walk(k.value, text, seen) for k in n.keywords if k.arg is not None}
        if len(kwargs) != len(n.keywords):
            raise ValueError(f"op {text!r}: **kwargs is not allowed")
        return call(fname, args, kwargs)
    raise ValueError(f"op {text!r}: {type(n).__name__} ({ast.unparse(n)!r}) is not allowed in an op string")


def _function_name(f: ast.AST, text: str) -> str:
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in _MODULES:
        return f.attr
    raise ValueError(f"op {text!r}: call of {ast.unparse(f)!r} is not allowed")
