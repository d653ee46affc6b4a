"""What a new process reuses of an earlier one's compiles, without Inductor's compile path.

Inductor's own graph cache needs `compile_fx` imported and the graph hashed (more than a second on
a small machine, before any loop runs), and in every new process it probes the CPU's vector ISAs by
compiling a test program and loading it in a child Python (about another second). A process whose
caches are warm should pay neither:

- `keep` records, per traced graph, the module Inductor wrote for it (its path and cache key);
  `load` imports that module in a later process and returns its `call`. The record's name is a
  hash of the traced graph's code, the inputs' shapes, strides and dtypes and the torch version,
  so a record answers only the graph it was made for; graphs with tensor constants (which the
  module would need handed in) are not recorded. A record whose module is gone is ignored.
- `config` is the Inductor config every compile and load runs under: where a probe on this machine
  (this process's or an earlier one's, kept on disk) found every vector ISA the CPU's flags name
  usable, `cpp.vec_isa_ok` is set and Inductor trusts the flags instead of probing again.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from ... import settings

_ISA: list = []  # this process's config patch, decided once


def _dir() -> str:
    return os.path.join(settings.get().cache_dir or settings.default_cache_dir(), "inductor")


def _write(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)


def _read(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _isa_patch() -> dict:
    try:
        import platform

        from torch._inductor import cpu_vec_isa as isa
        if platform.machine() not in ("x86_64", "AMD64"):
            return {}
        flags = isa.x86_isa_checker()
        named = sorted(str(v) for v in isa.supported_vec_isa_list if all(f in flags for f in str(v).split()))
        path = os.path.join(_dir(), f"vec-isa-torch{torch.__version__}.json")
        kept = _read(path)
        if kept != named and sorted(str(v) for v in isa.valid_vec_isa_list()) == named:  # probe, as Inductor would
            _write(path, named)
            kept = named
        return {"cpp.vec_isa_ok": True} if kept == named else {}
    except Exception:  # a torch without these internals, a read-only cache: Inductor probes itself
        return {}


def config(extra: dict | None = None):
    """A context with the Inductor config every compile and load runs under (the same on a machine:
    it is part of the key of Inductor's graph cache), plus `extra`."""
    import torch._inductor.config as inductor_config
    if not _ISA:
        _ISA.append(_isa_patch())
    return inductor_config.patch({**_ISA[0], **(extra or {})})


def graph_key(gm, args) -> str:
    """The record name of a traced graph compiled for inputs like `args`."""
    meta = [(tuple(a.shape), tuple(a.stride()), str(a.dtype), a.device.type) for a in args]
    return hashlib.sha256(repr((gm.code, meta, torch.__version__)).encode()).hexdigest()[:40]


def keep(key: str, gm, inner) -> None:
    """Record the module Inductor compiled `gm` into (a CompiledFxGraph), where it can be reloaded."""
    try:
        if any(n.op == "get_attr" for n in gm.graph.nodes) or getattr(inner, "constants", None):
            return
        path = inner.current_callable.__code__.co_filename
        if os.path.isfile(path) and isinstance(getattr(inner, "cache_key", None), str):
            _write(os.path.join(_dir(), key + ".json"), [inner.cache_key, path])
    except Exception:  # another torch's CompiledFxGraph, a read-only cache: nothing kept
        pass


def load(key: str, check=None):
    """The `call(list_of_tensors)` of a recorded module, or None (then compile). `check(path)`
    runs on the module's source path first: False skips the record."""
    rec = _read(os.path.join(_dir(), key + ".json"))
    if not (isinstance(rec, list) and len(rec) == 2 and all(isinstance(v, str) for v in rec)
            and os.path.isfile(rec[1])):
        return None
    if check is not None and not check(rec[1]):
        return None
    try:
        from torch._inductor.codecache import PyCodeCache
        with config():
            return PyCodeCache.load_by_key_path(rec[0], rec[1]).call
    except Exception:  # a module this torch cannot load: compile it again
        return None
