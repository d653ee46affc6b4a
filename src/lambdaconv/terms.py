"""Several named terms reduced over the same window, combined per output element: op={...}, post=.

    lc.conv2d(x, {"s": "x*W", "nx": "x*x", "nw": "W*W"}, {"W": w, "p": p, "q": q}, padding=1,
              post="sign(s) * (abs(s) / ((sqrt(nx) + q) * (sqrt(nw) + q))) ** p")

    y[n, o, p] = post(t_1[n, o, p], ..., t_m[n, o, p], post-only weights[o]) + bias[o]

Each term t_i is what a single-op conv with op_i and reduce_i gives (same stride, padding,
dilation, groups, padding_mode); reduce_i is a reduction or a pair (inner, outer) (twolevel.py).
A single op with a pair, or with post= (its term is named `y`), comes here too; a single op with one
reduction and no post never does (functional.convnd keeps its own path).

How each term runs (explain() prints it):
  constant   no x: a per-filter constant from the weights, computed once per call (under "ignore"
             padding once per pattern of valid taps: the border windows hold fewer taps)
  stacked    separable with sum / mean: every such term is a block of ONE native conv (backends/stacked.py)
  direct     the term's op through lc.convNd: the backend "auto" picks for it, or the named one
  two-level  reduce=(inner, outer): twolevel.py
A term without weights (x*x) is the same for every filter: it runs with one output channel per
group (a weight of ones; v * 1 == v exactly) and is broadcast in the epilogue, never per filter.

The epilogue is torch ops on the reduced terms in the layout (N, groups, out/groups, *out), where
per-group terms and per-filter weights broadcast without a copy; autograd through it gives the
exact gradients into every term and every weight post reads. The string form is parsed by the
op parser (ir/parse.py), never eval'd.
"""
from __future__ import annotations

import inspect
import keyword
from dataclasses import dataclass

import torch

from . import backends, calls, functional, reductions, twolevel
from .backends import stacked
from .backends.composite import compute_dtype
from .backends.decompose import _compile
from .geometry import broadcast_shapes, make_geometry, valid_taps
from .ir import OpSpec, evaluate, leaves, node, resolve_op, resolve_reduce, weight
from .ir.parse import _CONSTS, parse_string
from .ir.spec import PRESETS
from .plan import plan_for

ONE = "one"  # the weight of ones a weight-free term runs with (its only weight: no clash possible)


@dataclass(frozen=True)
class Term:
    name: str
    spec: OpSpec  # a weight-free term's op times the weight ONE
    reduce: object  # a reduction name, or (inner, outer)
    uses_x: bool
    shared: bool  # no weights of its own: one value per group, broadcast over the group's filters


@dataclass(frozen=True)
class Terms:
    terms: tuple
    post: object  # an Expr (a parsed string), a callable, or None
    post_reads: tuple  # the names post reads: terms, then weights
    weight_names: tuple  # the weights the terms use, first appearance first
    post_weights: tuple  # weights read only by post (a layer creates them with shape (out_channels,))
    post_text: str
    post_fn: object = None  # a string post compiled to torch ops with Python-float constants (decompose._compile)

    @property
    def names(self) -> tuple:
        return tuple(t.name for t in self.terms)


def is_terms(op, reduce, post) -> bool:
    return post is not None or type(op) is dict or isinstance(reduce, (tuple, list, dict))


_PARSED: dict = {}


def parse(op, reduce=None, post=None) -> Terms:
    """The Terms of op (a dict of name -> op, or one op), reduce and post; TypeError / ValueError."""
    try:  # strings only: a callable's trace is keyed by its guards (ir/spec.py), not by identity
        key = (tuple(op.items()) if isinstance(op, dict) else op, _hashable(reduce), post)
        hit = _PARSED.get(key) if all(isinstance(v, str) for v in _strings(op, post)) else None
    except TypeError:
        key = hit = None
    if hit is None:
        hit = _parse(op, reduce, post)
        if key is not None and all(isinstance(v, str) for v in _strings(op, post)):
            if len(_PARSED) > 256:
                _PARSED.clear()
            _PARSED[key] = hit
    return hit


def _strings(op, post):
    return (list(op.values()) if isinstance(op, dict) else [op]) + ([post] if post is not None else [])


def _hashable(r):
    if isinstance(r, dict):
        return tuple((k, _hashable(v)) for k, v in r.items())
    return tuple(r) if isinstance(r, list) else r


def _term_spec(name, op) -> OpSpec:
    if isinstance(op, str) and op not in PRESETS and not op.isidentifier():
        try:  # a term may leave x out (a per-filter constant such as W*W)
            expr, names = parse_string(op, require_x=False)
        except ValueError as err:
            raise ValueError(f"term {name!r}: {err}") from None
        return OpSpec(expr, names, "sum", op)
    try:
        return resolve_op(op)
    except (ValueError, TypeError) as err:
        raise type(err)(f"term {name!r}: {err}") from None


def _reduce(r, spec, name):
    if isinstance(r, (tuple, list)):
        if len(r) != 2 or not all(isinstance(v, str) for v in r):
            raise ValueError(f"term {name!r}: a two-level reduce is a pair of reduction names (inner, outer), such as "
                             f"('max', 'sum'), got {r!r}")
        return tuple(resolve_reduce(spec, v) for v in r)
    return resolve_reduce(spec, r)


def _parse(op, reduce, post) -> Terms:
    single = not isinstance(op, dict)
    items = [("y", op)] if single else list(op.items())
    if not items:
        raise ValueError("op is an empty dict; give at least one named term, as {'s': 'x*W'}")
    specs = {}
    for name, t in items:
        if not isinstance(name, str):
            raise TypeError(f"term names must be strings, got {name!r}")
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_") or name == "x" or name in _CONSTS:
            raise ValueError(f"term name {name!r} is not allowed: name a term by a Python identifier other than x, "
                             f"{', '.join(_CONSTS)}, not starting with '_'")
        specs[name] = _term_spec(name, t)
    names = tuple(specs)
    weight_names = tuple(dict.fromkeys(w for s in specs.values() for w in s.weight_names))
    clash = [n for n in names if n in weight_names]
    if clash:
        raise ValueError(f"term name{'s' if len(clash) > 1 else ''} {', '.join(map(repr, clash))} "
                         f"{'are' if len(clash) > 1 else 'is'} also a weight name; rename the term")
    if isinstance(reduce, dict):
        if single:
            raise TypeError("reduce is a dict (term name -> reduce), but op is a single op, not a dict of named terms")
        unknown = [k for k in reduce if k not in specs]
        missing = [n for n in names if n not in reduce]
        if unknown or missing:
            raise ValueError("reduce dict " + (f"names {', '.join(map(repr, unknown))}, which no term has" if unknown
                             else f"has no entry for term{'s' if len(missing) > 1 else ''} "
                                  f"{', '.join(map(repr, missing))}") + f" (terms: {', '.join(names)})")
        per = {n: _reduce(reduce[n], specs[n], n) for n in names}
    else:
        per = {n: _reduce(reduce, specs[n], n) for n in names}
    post_expr, reads, text = _post(post, names)
    post_weights = tuple(n for n in reads if n not in names and n not in weight_names)
    terms = []
    for n, s in specs.items():
        uses_x = bool(leaves(s.expr, "input"))
        shared = uses_x and not s.weight_names
        if shared:
            s = OpSpec(node("mul", s.expr, weight(ONE)), (ONE,), s.default_reduce, s.source)
        terms.append(Term(n, s, per[n], uses_x, shared))
    # constants as Python floats: (s + c) ** 2 is then a square, where a 0-d tensor exponent would
    # take torch.pow's general (several times slower) path
    fn = _compile(post_expr) if post_expr is not None and not callable(post_expr) else None
    return Terms(tuple(terms), post_expr, reads, weight_names, post_weights, text, fn)


def _post(post, names):
    """(post as an Expr or callable, the names it reads, its text for messages)."""
    if post is None:
        if len(names) > 1:
            raise ValueError(f"op has {len(names)} terms ({', '.join(names)}): give post= to combine them into one "
                             f"output")
        return None, (), ""
    if isinstance(post, str):
        try:
            expr, reads = parse_string(post, require_x=False)
        except ValueError as err:
            raise ValueError(f"post: {err}") from None
        if leaves(expr, "input"):
            raise ValueError(f"post {post!r} uses x: post reads the reduced terms ({', '.join(names)}) and per-filter "
                             f"weights, not the input")
        return expr, reads, post
    if callable(post):
        reads = []
        for p in inspect.signature(post).parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
                raise TypeError(f"post is called with keyword arguments (the term names and weights); its parameter "
                                f"{p.name!r} cannot take one")
            if p.kind == p.VAR_KEYWORD:
                reads += [n for n in names if n not in reads]
            elif p.default is p.empty or p.name in names:
                reads.append(p.name)
        return post, tuple(reads), getattr(post, "__name__", "post")
    raise TypeError(f"post must be an expression string or a callable, got {type(post).__name__}")


@dataclass
class _Prepared:
    x: torch.Tensor
    unbatched: bool
    g: object  # the shared Geometry
    work: list  # (how, term, weights) per term
    post_w: dict  # post's weights, as (1, groups, out/groups, 1...)
    ws: dict  # the terms' weights, as (O or 1, C/groups or 1, *k or 1s)
    bias: object
    args: tuple  # (d, stride, padding, dilation, groups, padding_mode, backend)


def _weight(n, w, x, d):
    if isinstance(w, (int, float)) and not isinstance(w, bool):
        w = torch.tensor(float(w), dtype=x.dtype, device=x.device)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weight {n!r} must be a tensor or a number, got {type(w).__name__}")
    calls._check_tensor(f"weight {n!r}", w, x)
    if w.dim() > d + 2:
        raise ValueError(f"weight {n!r} has {w.dim()} dims; conv{d}d weights have at most {d + 2}")
    return w


def prepare(d, input, ts: Terms, weights, bias, stride, padding, dilation, groups, padding_mode, backend):
    """Validate everything and decide how each term runs; no kernel runs (TypeError / ValueError)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    x, unbatched = calls.check_input(d, input)
    backends.registry.check_name(backend)
    if not isinstance(weights, dict):
        raise TypeError(f"weights must be a dict name -> tensor, got {type(weights).__name__}")
    unknown = [n for n in ts.post_weights if n not in weights]
    if unknown:
        raise ValueError(f"post uses {', '.join(map(repr, unknown))}, which is neither a term ({', '.join(ts.names)}) "
                         f"nor a weight ({', '.join(sorted(weights)) or 'none given'})")
    missing = [n for n in ts.weight_names if n not in weights]
    if missing:
        raise ValueError(f"the terms need weight{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                         f"but weights has {sorted(weights) or 'none'}")
    extra = [n for n in weights if n not in ts.weight_names and n not in ts.post_reads]
    if extra:
        raise ValueError(f"weights {', '.join(map(repr, extra))} are used by no term and not by post")
    if not ts.weight_names:
        raise ValueError("no term has weights, so out_channels and the kernel size are unknown")
    ws = {}
    for n in ts.weight_names:
        w = _weight(n, weights[n], x, d)
        ws[n] = w.reshape((1,) * (d + 2 - w.dim()) + tuple(w.shape))
    try:
        wshape = broadcast_shapes(*(w.shape for w in ws.values()))
    except RuntimeError:
        raise ValueError("the terms' weights do not broadcast together: "
                         + ", ".join(f"{n} {tuple(w.shape)}" for n, w in ws.items())) from None
    g = make_geometry(d, tuple(x.shape), tuple(wshape), stride, padding, dilation, groups, padding_mode)
    o, G = g.out_channels, g.groups
    post_w = {}
    for n in ts.post_reads:
        if n in ts.names:
            continue
        w = _weight(n, weights[n], x, d)
        if w.numel() not in (1, o) or (w.dim() > 1 and any(s != 1 for s in w.shape[1:])):
            raise ValueError(f"post reads weight {n!r} of shape {tuple(w.shape)}; a weight in post broadcasts to "
                             f"(out_channels,) = ({o},): give it shape (), (1,) or ({o},)")
        post_w[n] = w.reshape((1, G, o // G) + (1,) * d) if w.numel() == o else w.reshape((1,) * (d + 3))
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a tensor or None, got {type(bias).__name__}")
        calls._check_tensor("bias", bias, x)
        if tuple(bias.shape) != (o,):
            raise ValueError(f"bias must have shape ({o},) (out_channels), got {tuple(bias.shape)}")
    args = (d, stride, padding, dilation, groups, padding_mode, backend)
    # zero input channels: an empty (N, 0, *out) output, as torch's convolutions (calls.no_kernel)
    work = [_how(t, ws, wshape, x, g, args) for t in ts.terms] if g.in_channels else []
    return _Prepared(x, unbatched, g, work, post_w, ws, bias, args)


def _how(t: Term, ws, wshape, x, g, args):
    """(how, term, its weights): how the term runs, its sub-call validated (backend choice included)."""
    d, stride, padding, dilation, groups, padding_mode, backend = args
    if not t.uses_x:
        return "constant", t, {n: ws[n] for n in t.spec.weight_names}
    if t.shared:
        tw = {ONE: torch.ones((g.groups, 1) + g.kernel, dtype=x.dtype, device=x.device)}
    else:
        tw = {n: ws[n].expand(wshape) for n in t.spec.weight_names}
    full = (broadcast_shapes(*(w.shape for w in tw.values()))[0], g.cin_per_group) + g.kernel
    if isinstance(t.reduce, tuple):
        twolevel.check(t.spec, t.reduce, d, x, full, g, padding, backend)
        return "two-level", t, tw
    if backend in ("auto", "decompose") and not g.holes and x.device.type != "meta" and \
            plan_for(t.spec, t.reduce).strategy == "decompose":
        return "stacked", t, tw
    calls.prepare_and_select(d, x, t.spec, tw, None, stride, padding, dilation, groups, t.reduce, padding_mode,
                             backend, shown=t.spec.source)
    return "direct", t, tw


# Under torch.compile a terms call is a graph break and runs eagerly: the validation and the
# stacking layout walk the IR in Python, which Dynamo cannot trace (the single-op route has its
# own custom op instead, library.py).
@torch.compiler.disable
def conv_terms(d, input, op, weights, bias, stride, padding, dilation, groups, reduce, padding_mode, backend,
               grad, post):
    """functional.convnd for op dicts, two-level reduces and post= (see the module docstring)."""
    try:
        if grad is not None:
            raise ValueError("grad= overrides apply to a single op with a single reduction, not to terms, two-level "
                             "reductions or post=")
        ts = parse(op, reduce, post)
        p = prepare(d, input, ts, weights, bias, stride, padding, dilation, groups, padding_mode, backend)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err}{calls._context(op, input, weights)}") from None
    y = _run(ts, p)
    return y[0] if p.unbatched else y


def _run(ts: Terms, p: _Prepared):
    d, stride, padding, dilation, groups, padding_mode, backend = p.args
    x, g = p.x, p.g
    if not g.in_channels:
        return calls.no_kernel(x, p.bias, {**p.ws, **p.post_w}, backends.Call(None, None, g, x.device, x.dtype))
    G, og = g.groups, g.cout_per_group
    vals = {}
    todo = [(t, w) for how, t, w in p.work if how == "stacked"]
    if todo:
        outs = stacked.run(x, [(t.spec, t.reduce, w) for t, w in todo], g)
        vals.update({t.name: v for (t, _), v in zip(todo, outs)})
    for how, t, w in p.work:
        if how == "constant":
            vals[t.name] = _constant(t, w, g, compute_dtype(x.dtype), x.device)
        elif how == "two-level":
            vals[t.name] = twolevel.run(d, x, t.spec, w, t.reduce, g, padding, backend)
        elif how == "direct":
            v = functional.convnd(d, x, t.spec, w, None, stride, padding, dilation, groups, t.reduce, padding_mode,
                                  backend)
            vals[t.name] = v.unflatten(1, (G, -1))
    ct = compute_dtype(x.dtype)
    env = {n: v if v.dtype == ct else v.to(ct) for n, v in vals.items()}
    env.update({n: w if w.dtype == ct else w.to(ct) for n, w in p.post_w.items()})
    if ts.post is None:
        y = env[ts.terms[0].name]
    elif callable(ts.post):
        y = ts.post(**{n: env[n] for n in ts.post_reads})
    else:
        y = ts.post_fn(None, env)
        if not isinstance(y, torch.Tensor):  # a constant post
            y = torch.full((), y, dtype=ct, device=x.device)
    shape = (g.batch, G, og) + g.out_size
    if not isinstance(y, torch.Tensor) or broadcast_shapes(y.shape, shape) != shape:
        raise ValueError(f"post gave {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}, which "
                         f"does not broadcast to the output's (N, groups, out_channels/groups, *out) = {shape}")
    y = y.expand(shape).reshape((g.batch, g.out_channels) + g.out_size)
    if p.bias is not None:
        y = y + p.bias.to(ct).reshape((1, -1) + (1,) * d)
    dev = x.device.type  # under autocast the output has the autocast dtype, as a single-op conv's (nn.Conv2d's)
    if dev in ("cpu", "cuda", "xpu") and torch.is_autocast_enabled(dev) and x.dtype != torch.float64:
        return y.to(torch.get_autocast_dtype(dev))
    return y.to(x.dtype)


def _constant(t: Term, ws: dict, g, ct, device) -> torch.Tensor:
    """A term without x: reduce op(w) over each window's taps, per filter, as (1, G, Og, *out or 1s).
    The taps a window holds are all of them, but under "ignore" padding the border windows' valid
    ones: computed once per distinct pattern of valid taps (a handful: the border's)."""
    w = {n: v.to(ct) for n, v in ws.items()}
    o, cg, k = g.out_channels, g.cin_per_group, g.taps
    v = evaluate(t.spec.expr, torch.zeros((), dtype=ct, device=device), w, dtype=ct)
    v = v.expand((o, cg) + g.kernel).reshape(o, 1, cg, k)
    ignore = g.padding_mode == "ignore" and any(lo or hi for lo, hi in g.pad)
    if ignore:
        pats, inv = torch.unique(valid_taps(g, v.device).t(), dim=0, return_inverse=True)  # (U, K), (P,)
    else:
        pats, inv = torch.ones((1, k), dtype=torch.bool, device=v.device), None
    r = t.reduce if isinstance(t.reduce, tuple) else (t.reduce,)
    taps = torch.where(pats[None, :, None, :], v, reductions.get(r[0]).identity)  # (O, U, Cg, K)
    n = pats.sum(1)
    if len(r) == 2:
        per_c = reductions.get(r[0]).reference(taps, -1, n[:, None])
        out = reductions.get(r[1]).reference(per_c, -1, torch.full((), cg, device=v.device))
    else:
        out = reductions.get(r[0]).reference(taps.flatten(2), -1, n * cg)  # (O, U)
    if inv is None:
        return out.reshape((1, g.groups, o // g.groups) + (1,) * g.dims)
    return out[:, inv].reshape((1, g.groups, o // g.groups) + g.out_size)


