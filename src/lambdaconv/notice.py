"""One line on stderr when a first call compiles for longer than NOTICE_S seconds.

A first call of a new op and shape compiles kernels (Triton, Inductor) and may tune them: seconds
in which a training script would otherwise sit silent. `compiling(what)` starts a timer; if the
block is still running after NOTICE_S, it prints "lambdaconv: compiling <what> ..." once.
"""
from __future__ import annotations

import contextlib
import sys
import threading

NOTICE_S = 2.0
_seen: set = set()


@contextlib.contextmanager
def compiling(what: str):
    timer = threading.Timer(NOTICE_S, lambda: print(f"lambdaconv: compiling {what} (once per op and shape; "
                                                    f"kept on disk for later runs)", file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def first(key, what) -> contextlib.AbstractContextManager:
    """compiling(what()) the first time `key` is seen in this process, else a no-op context."""
    if key in _seen:
        return contextlib.nullcontext()
    _seen.add(key)
    return compiling(what())


def call_text(what: str, spec, reduce, g, dtype) -> str:
    """"<what> of <op> (<reduce>) for N.. C.. O.. HxW, kernel kxk[, stride, dilation], <dtype>": a
    compile told apart from the others of a run (a transposed layer's phases, fp32 and bf16)."""
    extra = "".join(f" {name} {'x'.join(map(str, v))}" for name, v in (("stride", g.stride), ("dilation", g.dilation))
                    if any(i != 1 for i in v))
    return (f"{what} of {spec} ({reduce}) for N{g.batch} C{g.in_channels} O{g.out_channels} "
            f"{'x'.join(map(str, g.in_size))}, kernel {'x'.join(map(str, g.kernel))}{extra}, "
            f"{str(dtype).replace('torch.', '')}")
