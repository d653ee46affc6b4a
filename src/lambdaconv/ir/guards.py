"""Guards for traced callables: the cache key of a callable op is what its trace depends on.

Tracing runs the op once on proxies, so every value the op reads from outside its parameters is
frozen into the trace as a constant: a number in a closure cell (`scale`), a module-level global,
a helper function it calls. Caching the trace by function object would keep a stale constant
after `scale = 3`; tracing on every call would cost a millisecond for the common inline lambda
(a new function object per call, same code). So the key is the code object plus a snapshot of
every value the code reads from outside: closure cells and the globals (and builtins) named by its
LOAD_GLOBAL instructions, recursively through the helper functions it calls. A changed value
gives a new key (a new trace); an unchanged one costs a few microseconds to check.

Values are guarded by value (numbers, strings, None, and tuples / lists / dicts of them), by
identity (modules, torch and builtin functions, classes) or recursively (Python functions). A
captured tensor, or an object whose attributes the op may read (an nn.Module, a config object),
cannot be watched cheaply: that is a ValueError naming it, asking to pass it as a weight.
"""
from __future__ import annotations

import builtins
import dis
import functools
import types
from typing import Optional

import torch

_BY_VALUE = (bool, int, float, complex, str, bytes, type(None))
_BY_IDENTITY = (types.ModuleType, types.BuiltinFunctionType, types.BuiltinMethodType, type,
                types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType,
                type(torch.sigmoid), type(torch.Tensor.add), type(Ellipsis))
_LOADS_GLOBAL = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_MISSING = object()


class _Same:
    """Compares by identity, hashes by id, and holds a reference (an id alone could be reused)."""
    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return type(other) is _Same and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


_NAMES: dict = {}  # id(code) -> (code, names); by id: hashing a code object hashes its bytecode


def global_names(code: types.CodeType) -> tuple:
    """Names a code object (and the code nested in it: comprehensions, inner lambdas) loads as
    globals, in first-use order; computed once per code object (dis is slow)."""
    hit = _NAMES.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    if len(_NAMES) >= 1024:
        _NAMES.clear()
    _NAMES[id(code)] = (code, _scan(code))
    return _NAMES[id(code)][1]


def _scan(code: types.CodeType) -> tuple:
    out = []
    stack = [code]
    while stack:
        c = stack.pop()
        for ins in dis.get_instructions(c):
            if ins.opname in _LOADS_GLOBAL and ins.argval not in out:
                out.append(ins.argval)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return tuple(out)


class Unwatchable(ValueError):
    """An op reads a value that its cached trace cannot be checked against."""


def _value(v, where: str, seen: set):
    if v is _MISSING:
        return _MISSING
    if type(v) in _BY_VALUE or isinstance(v, _BY_VALUE):
        # the type too: 2 and 2.0 trace alike, but True and 1 need not (a bool in where())
        return (type(v), v)
    if isinstance(v, _BY_IDENTITY):
        return _Same(v)
    if isinstance(v, torch.Tensor):
        raise Unwatchable(f"the op reads the tensor {where} from outside its parameters; lambdaconv "
                          f"freezes such values into its trace, so pass it as a weight (a parameter "
                          f"of the op, given in weights) instead")
    mod = getattr(v, "__module__", None) or ""
    if (mod == "torch" or mod.startswith("torch.")) and callable(v):  # torch's own functions, by identity
        return _Same(v)
    if isinstance(v, types.FunctionType):
        return ("fn", _function(v, where, seen))
    if isinstance(v, types.MethodType):
        return ("method", _value(v.__func__, where, seen), _value(v.__self__, f"{where}.__self__", seen))
    if isinstance(v, functools.partial):
        return ("partial", _value(v.func, where, seen), _value(v.args, where, seen),
                _value(v.keywords, where, seen))
    if type(v) in (tuple, list):
        return (type(v),) + tuple(_value(e, f"{where}[{i}]", seen) for i, e in enumerate(v))
    if type(v) is dict:
        return (dict,) + tuple((_value(k, where, seen), _value(e, f"{where}[{k!r}]", seen)) for k, e in v.items())
    raise Unwatchable(f"the op reads {where}, a {type(v).__name__}, from outside its parameters; its value "
                      f"would be frozen into lambdaconv's trace and a later change would go unseen. Pass "
                      f"tensors as weights, and bind a number to a local name before the lambda "
                      f"(s = self.scale; op = lambda x, W: W * x * s)")


def _function(fn: types.FunctionType, where: str, seen: set) -> tuple:
    code = fn.__code__
    if id(fn) in seen:  # recursion: the function's own values are already in the key
        return (_Same(code),)
    seen.add(id(fn))
    cells = ()
    if fn.__closure__:
        cells = tuple(_value(_contents(c), f"{where and where + ': '}closure variable {n!r}", seen)
                      for n, c in zip(code.co_freevars, fn.__closure__))
    g = fn.__globals__
    bt = g.get("__builtins__", builtins)
    bt = bt.__dict__ if isinstance(bt, types.ModuleType) else bt
    gl = []
    for n in global_names(code):
        v = g.get(n, _MISSING)
        if v is _MISSING:
            v = bt.get(n, _MISSING)
        if v is not _MISSING:
            gl.append(_value(v, f"{where and where + ': '}global {n!r}", seen))
    return (_Same(code), cells, tuple(gl))


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a name assigned after the lambda was made)
        return _MISSING


def key(op) -> Optional[tuple]:
    """The cache key of a callable op (see the module docstring), or None when the callable is not
    a function, method or partial (then it is traced on every call). Raises Unwatchable."""
    if isinstance(op, (types.FunctionType, types.MethodType, functools.partial)):
        name = getattr(op, "__name__", "op")
        return _value(op, "" if name == "<lambda>" else f"({name})", set())
    return None


def reads(op) -> list:
    """Every object an op function reads from outside its parameters (for error hints)."""
    fn = getattr(op, "__func__", op)
    if not isinstance(fn, types.FunctionType):
        return []
    out = [_contents(c) for c in fn.__closure__ or ()]
    bt = vars(builtins)
    out += [fn.__globals__.get(n, bt.get(n)) for n in global_names(fn.__code__)]
    return out
