"""The op IR: trace/parse ops into an expression DAG, derive it, print it, evaluate it."""
from .expr import Expr, const, inp, node, weight, topo_order, leaves, substitute
from .evaluate import evaluate, evaluate_many
from .grad import partials
from .spec import OpSpec, PRESETS, REDUCES, resolve_op, resolve_reduce, with_grad

__all__ = ["Expr", "const", "inp", "node", "weight", "topo_order", "leaves", "substitute", "evaluate",
           "evaluate_many", "partials", "OpSpec", "PRESETS", "REDUCES", "resolve_op", "resolve_reduce", "with_grad"]
