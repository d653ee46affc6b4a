"""Tuning winners kept on disk, so that a new process does not time the candidates again.

The tuners (tuning.launch, gluon.forward) time a few configs the first time a kernel meets a shape
bucket. Their winners go to one JSON file per GPU model and software versions in the cache
directory (settings.cache_dir): the key names the generated kernel module (named by the hash of
its source), the kernel, its constexprs and the batch-size bucket, all stable across processes.
A new process looks a decision up here before timing anything; the compiled kernels themselves
come from Triton's own cache. A missing, unreadable or foreign file is treated as empty.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

from ... import settings

_loaded: dict = {}  # path -> {key: winner}
_MAX = 20000  # entries kept per file (the oldest go first)


def _path(device) -> str:
    from .kernels import cache_dir
    try:
        import triton
        tv = triton.__version__
    except ImportError:  # pragma: no cover (the triton backend needs triton)
        tv = "none"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    tag = "".join(c if c.isalnum() or c in "-." else "_" for c in f"{name}-torch{torch.__version__}-triton{tv}")
    return os.path.join(cache_dir(), f"winners-{tag}.json")


def _table(path: str) -> dict:
    t = _loaded.get(path)
    if t is None:
        try:
            with open(path) as fh:
                t = json.load(fh)
            if not isinstance(t, dict):
                t = {}
        except (OSError, ValueError):
            t = {}
        _loaded[path] = t
    return t


def key(*parts) -> str:
    """A stable text key: the parts' reprs (module names, sorted constexpr items, ints)."""
    return repr(parts)


def get(device, k: str):
    """The stored winner of key k (a list or a string), or None."""
    if not settings.get().tune:
        return None
    return _table(_path(device)).get(k)


def put(device, k: str, winner) -> None:
    """Store a winner (JSON-able); merged with what other processes wrote, replaced atomically."""
    path = _path(device)
    mine = _table(path)
    mine[k] = winner
    try:
        with open(path) as fh:
            disk = json.load(fh)
        if isinstance(disk, dict):
            disk.update(mine)
            mine.update(disk)
    except (OSError, ValueError):
        pass
    while len(mine) > _MAX:
        mine.pop(next(iter(mine)))
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".winners-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        os.replace(tmp, path)
    except OSError:  # a read-only cache: keep the winner for this process only
        pass


def clear_memory() -> None:
    """Forget what was read (tests; the file stays)."""
    _loaded.clear()
