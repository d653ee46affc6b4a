"""Generate the kernel module of one (op, reduce), write it to the disk cache, import it.

The source is a pure function of the op's IR, the reduce and which weights need gradients; its
sha256 names the file, so a cached file is never stale. Files are written to a temporary name and
os.replace'd (atomic on POSIX and Windows): two processes generating the same kernel at once each
write a complete file and one wins, never a torn one.

A module is compiled from the text generated in this process, never from the file or from bytecode:
the cache may be shared, and importlib would run a `__pycache__/*.pyc` planted next to the file
without reading the source. The file is the copy that tracebacks, triton's error messages and
readers point at; linecache holds the verified text under its path, so inspect (which triton's
@jit reads a kernel's source through) sees exactly what was compiled.
"""
from __future__ import annotations

import hashlib
import importlib.util
import linecache
import os
import stat
import sys
import tempfile
import types

from ... import reductions, settings
from ...ir import OpSpec
from . import gradcode
from . import templates as T
from .codegen import PRELUDE, emit, fill, lines

GENERATOR_VERSION = "2"  # bump when the templates change meaning (the hash covers the text anyway)

_modules: dict = {}


def cache_dir() -> str:
    d = settings.get().cache_dir or settings.default_cache_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)  # private when we create it (an existing one is the user's)
    return d


def _fill(template: str, **hooks) -> str:
    return fill(template, GEOMETRY=T.GEOMETRY.rstrip("\n"), **hooks)


# Ops whose half-precision result is the float32 one rounded: one add/sub/max/min of the input and
# one weight, negations aside (each rounds once, and max/min of rounded values is the rounded max).
_EXACT_OPS = {"input", "weight", "add", "sub", "neg", "maximum", "minimum"}


def half_exact(spec: OpSpec, reduce: str) -> bool:
    """True if max/min of this op can be computed in fp16/bf16 (packed, twice the fp32 rate)
    with the same result as computing in float32 and rounding the output."""
    from ...ir import topo_order
    nodes = topo_order(spec.expr)
    binary = [n for n in nodes if n.op in ("add", "sub", "maximum", "minimum")]
    return (reductions.get(reduce).backward == "select" and len(spec.weight_names) == 1 and len(binary) == 1
            and all(n.op in _EXACT_OPS for n in nodes))


def source(spec: OpSpec, reduce: str, need_x: bool, need_w: tuple, compute: str = "tl.float32") -> str:
    """The module text: helpers, forward, and the backward kernels this call needs."""
    names = spec.weight_names
    wv = {n: f"w_{i}" for i, n in enumerate(names)}
    parts = [fill(T.HEADER, OP=str(spec.expr).replace("\n", " "), REDUCE=reduce), PRELUDE]

    rec = reductions.get(reduce)
    init, combine, finish, aux, ident = rec.code["triton"]
    code, (out,) = emit([spec.expr], "xv", wv, 12)
    parts.append(_fill(T.FORWARD, W_ARGS=lines(T.W_ARG_FWD, names), W_LOADS=lines(T.W_LOAD_FWD, names),
                       OP_CODE=code, OP_OUT=out, IDENTITY=ident, INIT=init, COMBINE=combine, FINISH=finish,
                       AUX=aux, COMPUTE=compute))
    partials = spec.partials()
    lse = rec.backward == "softmax"
    if rec.backward == "select":
        wanted = [partials[0]] + [p for p, k in zip(partials[1:], need_w) if k]
        code, outs = emit(wanted, "xv", wv, 4)
        atomics = [T.ATOMIC_X.format(out=outs[0])] if need_x else []
        gw_names = [n for n, k in zip(names, need_w) if k]
        atomics += [T.ATOMIC_W.format(i=i, out=o) for i, o in enumerate(outs[1:])]
        parts.append(_fill(T.BACKWARD_SELECT, W_ARGS=lines(T.W_ARG_S, names), W_LOADS=lines(T.W_LOAD_S, names),
                           GW_ARGS=lines(T.GW_ARG_S, gw_names), OP_CODE=code,
                           ATOMICS="\n".join(atomics) or "    pass"))
        return "\n".join(parts)
    gv = {**wv, gradcode.GS_NAME: "gs"}  # the gradient terms read the kernels' `gs`
    if need_x:
        tx, sel = gradcode.term(partials[0], lse)
        code, outs = emit([tx] + ([spec.expr] if lse else []), "xv", gv, 12)
        scale = fill(T.SCALE_LSE_X, FWD=outs[1]) if lse else ""
        parts.append(_fill(T.BACKWARD_X, W_ARGS=lines(T.W_ARG_B, names), W_LOADS=lines(T.W_LOAD_X, names),
                           OP_CODE=code, SCALE=scale, TERM_0=gradcode.value(outs[0], sel)))
    if any(need_w):
        terms = [gradcode.term(p, lse) for p, k in zip(partials[1:], need_w) if k]
        gw_names = [n for n, k in zip(names, need_w) if k]
        code, outs = emit([t for t, _ in terms] + ([spec.expr] if lse else []), "xv", gv, 8)
        # logsumexp: the softmax scale exp(tap - y) needs the forward value, printed in the same namespace
        for tmpl, loads, init, store, lse_scale in (
                (T.BACKWARD_W, T.W_LOAD_W, T.GW_INIT, T.GW_STORE, T.SCALE_LSE_W),
                (T.BACKWARD_W_ROWS, T.W_LOAD_W_ROWS, T.GW_INIT_ROWS, T.GW_STORE_ROWS, T.SCALE_LSE_W_ROWS)):
            scale = fill(lse_scale, FWD=outs[-1]) + "\n" if lse else ""
            parts.append(_fill(
                tmpl, W_ARGS=lines(T.W_ARG_B, names), W_LOADS=lines(loads, names),
                GW_ARGS=lines(T.GW_ARG, gw_names), OP_CODE=code, SCALE="", GW_INIT=lines(init, gw_names),
                GW_ACC=scale + "\n".join(T.GW_ACC.format(i=i, term=gradcode.value(o, sel))
                                         for i, (o, (_, sel)) in enumerate(zip(outs, terms))),
                GW_STORE=lines(store, gw_names)))
    return "\n".join(parts)


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def module_path(text: str) -> str:
    """Where the module of `text` is cached: named by the hash of the text (and generator)."""
    digest = hashlib.sha256((GENERATOR_VERSION + text).encode()).hexdigest()[:20]
    return os.path.join(cache_dir(), f"lc_{digest}.py")


def _holds(path: str, text: str) -> bool:
    """True if `path` is a regular file holding exactly `text`. Non-blocking and bounded: a FIFO
    or a huge file planted under the name must not hang or exhaust the reader."""
    want = text.encode()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(len(want) + 1) == want
    except OSError:
        return False
    finally:
        os.close(fd)


class _TextLoader:
    """The module's loader as far as linecache and inspect ask it: the verified text, by name."""

    def __init__(self, text: str):
        self._text = text

    def get_source(self, name):
        return self._text


def load(text: str, interpret: bool):
    """The module of `text`, compiled from `text` itself (the cache file is written once, under
    its hash, for readers). Modules are kept per interpret flag: triton decides
    compiled-vs-interpreted when a kernel is decorated."""
    path = module_path(text)
    digest = os.path.basename(path)[3:-3]
    key = (digest, interpret)
    mod = _modules.get(key)
    if mod is not None:
        return mod
    if not _holds(path, text):
        _write_atomic(path, text)
    name = f"lambdaconv_kernels_{digest}_{int(interpret)}"
    mod = types.ModuleType(name)
    loader = _TextLoader(text)
    mod.__file__, mod.__loader__ = path, loader
    mod.__spec__ = importlib.util.spec_from_loader(name, loader, origin=path)
    # inspect.getsource (triton's @jit, and the interpreter's rewrite at a kernel's first call) reads
    # through linecache: an entry without mtime is never re-checked against the file, so it serves
    # this text whatever happens to the file later
    linecache.cache[path] = (len(text), None, text.splitlines(True), path)
    code = compile(text, path, "exec", dont_inherit=True)
    sys.modules[name] = mod  # triton's jit looks functions up through their module
    try:
        exec(code, mod.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _modules[key] = mod
    return mod


_by_key: dict = {}


def kernels(spec: OpSpec, reduce: str, need_x: bool, need_w: tuple, interpret: bool, compute="tl.float32"):
    """The kernel module of (op, reduce, gradients wanted, compute dtype), generated once per key:
    generating and hashing the text costs ~0.1 ms of host time, more than the kernel at small sizes."""
    key = (spec, reduce, need_x, tuple(need_w), interpret, compute)
    mod = _by_key.get(key)
    if mod is None:
        mod = _by_key[key] = load(source(spec, reduce, need_x, tuple(need_w), compute), interpret)
    return mod
