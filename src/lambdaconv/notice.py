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
