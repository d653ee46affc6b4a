"""Compile a function of tensors with Inductor, once per key, without dynamo.

The function (graphs.py) is traced by make_fx under a fake mode with static shapes, and the aten
graph goes to torch._inductor.compile: Inductor's C++ backend fuses it into OpenMP loops and keeps
the result in its own on-disk cache (the FX graph cache, keyed by the graph and the shapes), so a
new process with the same op and shapes loads the compiled code instead of compiling it. The fake
mode carries a ShapeEnv and the compile runs inside a TracingContext: without them Inductor
bypasses that cache. Dynamo is not involved: it would count every op and shape as a recompile of
one function (its limit is 8) and guard on every call.

A warm process does not go through Inductor's compile path at all: warm.py keeps, per traced
graph, the path of the module Inductor wrote, and loads it directly (importing Inductor's compiler
and hashing the graph for its cache cost more than a second).

Inductor materializes a pointwise value it judges costly to recompute (a reused exp, tanh or
sigmoid, a long expression): for our graphs that value is the taps, (N, *out, O, *K, C) elements,
the blow-up this path exists to avoid. So the traced graph is first rewritten to give every
taps-sized value one user (`unshare`: a copy per further user, which Inductor's common-
subexpression elimination inside the fused loop folds back into one evaluation), Inductor's
realize thresholds are raised for these compiles, and the compiled module is checked: a buffer
above the budget (`check_buffers`) makes this graph unavailable, so it runs on the tiled path
rather than with unbounded memory.

If Inductor cannot compile here (no C++ compiler, a torch without it), `Unavailable` is raised with
the reason; the backend then warns once and runs the tiled path.
"""
from __future__ import annotations

import math
import re
import threading
import time

import torch

from ...notice import compiling
from . import warm

_COMPILED: dict = {}
_MAX = 256  # compiled graphs kept per process (each holds a loaded shared library)
_failed: list = []  # the reason Inductor could not compile, once it failed
_lock = threading.Lock()
_MAX_NODES = 3000  # a graph that unsharing grows past this is not compiled (tiled path): ours have < 1000
# Inductor's thresholds for materializing an expression: raised, so the taps stay in registers.
# (Bounded: a huge inline expression can overflow the recursion of Inductor's own evaluation.)
_REALIZE = {"realize_opcount_threshold": 2000, "realize_acc_reads_threshold": 2000,
            "realize_cpu_opcount_threshold": 2000, "realize_cpu_acc_reads_threshold": 2000}


class Unavailable(RuntimeError):
    """Inductor cannot compile here (on this machine, or this graph); the message says why."""


def failed() -> str | None:
    """Why compiling failed in this process (then the backend stays off), or None."""
    return _failed[0] if _failed else None


def compiled(key, fn, args: list, what: str, taps: int = 1):
    """fn compiled for tensors shaped and strided like `args` (a list), cached under `key`. The
    compiled callable takes the tensors positionally and returns a list. `taps`: the kernel's taps
    per window, which scale the buffer budget (_budget)."""
    hit = _COMPILED.get(key)
    if hit is not None:
        if isinstance(hit, Unavailable):
            raise hit
        return hit
    if _failed:
        raise Unavailable(_failed[0])
    with _lock:
        hit = _COMPILED.get(key)
        if hit is None:
            try:
                with compiling(f"{what} with Inductor"):
                    hit = _build(fn, args, taps)
            except Exception as err:
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
                if _is_environment(err):  # nothing will compile here
                    _failed.append(reason)
                    raise Unavailable(reason) from err
                # this graph alone (an op Inductor cannot lower): it runs on the tiled path
                hit = _COMPILED[key] = Unavailable(f"{what}: {reason}")
                raise hit from err
            if len(_COMPILED) >= _MAX:
                _COMPILED.clear()
            _COMPILED[key] = hit
    return hit


def _is_environment(err: Exception) -> bool:
    """A failure of the machine (no compiler, no Inductor), not of this graph."""
    name = type(err).__name__
    text = str(err)
    return (isinstance(err, (ImportError, OSError)) or "CppCompileError" in name or "InvalidCxxCompiler" in name
            or "compiler" in text.lower() and ("not found" in text.lower() or "no such file" in text.lower()))


def _build(fn, args: list, taps: int = 1):
    import torch._guards
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # fresh stand-ins, one per argument: a tensor passed twice (or views of one storage) would be
    # traced as one aliased input, and the graph compiled for that aliasing
    args = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device) for a in args]
    mode = FakeTensorMode(shape_env=ShapeEnv())
    # the graph is the function as written: no autocast casts, no autograd recording, no inference-
    # mode tensors (which make_fx cannot trace)
    with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
        with mode:
            fake = [mode.from_tensor(a, static_shapes=True) for a in args]
            # Inductor's decompositions at trace time: the graph is what its lowering takes, and
            # compile_fx_inner compiles it directly (no second trace through AOT autograd)
            gm = make_fx(fn, decomposition_table=select_decomp_table(), tracing_mode="fake")(*fake)
    budget = _budget(gm, args, taps)
    unshare(gm, budget)
    key = warm.graph_key(gm, args)
    call = warm.load(key, lambda path: _fits(path, budget))  # a record that does not fit: compiled again
    if call is None:
        from torch._inductor.compile_fx import compile_fx_inner
        with torch._guards.tracing(torch._guards.TracingContext(mode)), warm.config(_realize()):
            inner = compile_fx_inner(gm, fake)
        check_buffers(inner.current_callable.__code__.co_filename, budget)
        warm.keep(key, gm, inner)
        call = inner
    return lambda *a: call(list(a))


def _numel(v) -> int:
    return math.prod(v.shape) if isinstance(v, torch.Tensor) else 0


def _budget(gm, args: list, taps: int) -> int:
    """Elements a buffer of the compiled graph may hold: twice the largest input or output times
    the kernel's taps, plus one tile. A value that does not depend on the filter (tanh(x) at each
    window tap, which Inductor may store once rather than evaluate per out-channel) stays under it;
    the taps of every filter (out-channels x kernel taps x in-channels per output) lie far above."""
    from ... import settings
    outs = [o for n in gm.graph.nodes if n.op == "output" for o in n.all_input_nodes]
    io = [_numel(a) for a in args] + [_numel(o.meta.get("val")) for o in outs]
    return 2 * taps * max(io, default=0) + settings.get().tile_elements


def unshare(gm, budget: int) -> None:
    """Give every computed value of more than `budget` elements one user, copying it (and, in turn,
    its inputs) for each further user. Raises Unavailable past _MAX_NODES nodes."""
    graph = gm.graph
    for node in reversed(list(graph.nodes)):
        if (node.op != "call_function" or len(node.users) < 2 or _numel(node.meta.get("val")) <= budget
                or node.is_impure()):  # a random or mutating op is one value: never copied
            continue
        for user in list(node.users)[1:]:
            with graph.inserting_before(user):
                copy = graph.node_copy(node)
            user.replace_input_with(node, copy)
        if len(graph.nodes) > _MAX_NODES:
            raise Unavailable(f"the op's expression grows past {_MAX_NODES} nodes when its shared terms are "
                              f"unshared (to keep the taps out of memory)")
    gm.recompile()


_BUFFER = re.compile(r"empty_strided(?:_cpu)?\(\(([^()]*)\)")


def check_buffers(path: str, budget: int) -> None:
    """Raise Unavailable if the compiled module at `path` allocates a buffer above `budget` elements.
    Fails closed: a module whose allocations it cannot read (no `call`, none found, a size that
    is not a number) is refused too."""
    with open(path) as fh:
        src = fh.read()
    found = _BUFFER.findall(src)
    if "def call(" not in src or not found:
        raise Unavailable(f"cannot read the compiled module's buffers ({path})")
    for dims in found:
        parts = [d for d in dims.replace(" ", "").split(",") if d]
        if not all(d.isdigit() for d in parts):
            raise Unavailable(f"a buffer of the compiled module has a size that is not a number: ({dims})")
        n = math.prod(int(d) for d in parts)
        if n > budget:
            raise Unavailable(f"Inductor would materialize {n} elements (budget {budget}): the op's taps")


def _fits(path: str, budget: int) -> bool:
    try:
        check_buffers(path, budget)
        return True
    except Unavailable:
        return False


def _realize() -> dict:
    import torch._inductor.config as inductor_config
    return {k: v for k, v in _REALIZE.items() if hasattr(inductor_config, k)}


def clear() -> None:
    """Forget the compiled graphs of this process (tests)."""
    _COMPILED.clear()
    _failed.clear()


def timed_build(fn, args: list) -> float:
    """Seconds to build fn for args, uncached (benchmarks of the compile itself)."""
    t0 = time.perf_counter()
    _build(fn, args)
    return time.perf_counter() - t0


