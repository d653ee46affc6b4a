"""One line on stderr when a first call compiles for longer than NOTICE_S seconds.

A first call of a new op and shape compiles kernels (Triton, Inductor) and may tune them: seconds
in which a training script would otherwise sit silent. `compiling(what)` starts a timer; if the
block is still running after NOTICE_S, it prints "lambdaconv: compiling <what> ..." once.
`steps(what, total)` counts the steps of a long loop (a tuner compiling and timing its candidate
configs): once it has run for NOTICE_S, a progress bar on a terminal, one line in a log.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time

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


class _Steps:
    def __init__(self, what: str, total: int):
        self.what, self.total, self.done, self.t0, self.shown = what, total, 0, time.perf_counter(), False
        self.tty = getattr(sys.stderr, "isatty", lambda: False)()

    def __call__(self) -> None:
        """One step done."""
        self.done += 1
        if time.perf_counter() - self.t0 < NOTICE_S:
            return
        if self.tty:
            bar = "#" * (20 * self.done // self.total)
            print(f"\rlambdaconv: {self.what} [{bar:<20}] {self.done}/{self.total}", end="", file=sys.stderr,
                  flush=True)
        elif not self.shown:
            print(f"lambdaconv: {self.what}: {self.done}/{self.total} after {time.perf_counter() - self.t0:.0f} s",
                  file=sys.stderr, flush=True)
        self.shown = True


@contextlib.contextmanager
def steps(what: str, total: int):
    """A context yielding advance(): call it after each of `total` steps."""
    s = _Steps(what, max(1, total))
    try:
        yield s
    finally:
        if s.shown and s.tty:
            print(file=sys.stderr, flush=True)


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
