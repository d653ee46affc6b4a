"""Every setting lambdaconv reads from the environment, read once, in this module alone.

The library's defaults are what a user should run; the settings exist for debugging, profiling and
benchmark sweeps. Each comes from an environment variable, read when lambdaconv is imported, and can
be changed for a block of code (tests, sweeps) with `override`:

    import lambdaconv as lc
    with lc.settings.override(tune=False, gluon="strict"):
        y = layer(x)

| field | environment variable | default | meaning |
|---|---|---|---|
| cache_dir | LAMBDACONV_CACHE | $XDG_CACHE_HOME/lambdaconv | where generated kernel modules are written |
| tune | LAMBDACONV_TRITON_TUNE | False | time the candidate configs of each kernel on the first call of a shape bucket (winners kept on disk); False: the config a table of measured winners gives (no timing, a first call compiles one config per kernel) |
| triton_config | LAMBDACONV_TRITON_CONFIG | None | "BLOCK_M,BLOCK_N,warps,stages,unroll" for every portable kernel |
| triton_gw | LAMBDACONV_TRITON_GW | None | "outer": the outer-product portable weight gradient |
| fast_launch | LAMBDACONV_FAST_LAUNCH | True | launch compiled kernels through the cached launcher |
| gluon | LAMBDACONV_GLUON | "1" | Gluon kernels on sm_80+: "1" on, "0" off, "strict" raise where one fails |
| gluon_bwd | LAMBDACONV_GLUON_BWD | "auto" | Gluon backward kernels: "auto", "1" always, "0" never |
| gluon_fwd_config | LAMBDACONV_GLUON_FWD_CONFIG | None | for every Gluon forward: an index into gluon.CONFIGS, or a config written out "64,64,4,..." |
| gluon_fwd_maxnreg | LAMBDACONV_GLUON_FWD_MAXNREG | None | a register cap for every Gluon forward config |
| gluon_sgn | LAMBDACONV_GLUON_SGN | "1" | predicated sign accumulation: "1" both gradients, "0" neither, "x" / "w" one |
| gluon_gx_bk | LAMBDACONV_GLUON_GX_BK | None | out channels per thread and step of the Gluon input gradient |
| gluon_gx_maxnreg | LAMBDACONV_GLUON_GX_MAXNREG | None | register cap of the Gluon input gradient ("0": none) |
| gluon_gw_maxnreg | LAMBDACONV_GLUON_GW_MAXNREG | None | register cap of the Gluon weight gradient ("0": none) |
| gluon_gw_tile | LAMBDACONV_GLUON_GW_TILE | None | "TO,TC,WO,WC" tile of the Gluon weight gradient |
| gluon_gw_u | LAMBDACONV_GLUON_GW_U | None | blocks of rows per loop iteration of the Gluon weight gradient |
| gluon_gw_per_sm | LAMBDACONV_GLUON_GW_PER_SM | None | weight-gradient programs per SM |
| cpu_compile | LAMBDACONV_CPU_COMPILE | "auto" | direct ops on CPU compiled by Inductor: "auto" for calls of at least cpu_compile_min_taps taps, "1" every call, "0" never (the tiled path) |
| cpu_compile_min_taps | LAMBDACONV_CPU_COMPILE_MIN_TAPS | 2**22 | the smallest call (taps of one forward) that "auto" compiles: below it a compile costs more than it saves |
| tile_elements | LAMBDACONV_TILE_ELEMENTS | 2**20 | the tiled backend's tile budget on CPU (elements) |
| tile_elements_gpu | LAMBDACONV_TILE_ELEMENTS_GPU | 2**25 | the same on GPU |

None means "the kernel's own default". TRITON_INTERPRET is triton's variable, not ours: triton reads it
itself whenever it compiles, so `interpreting()` follows it live rather than from the snapshot.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Optional

_PREFIX = "LAMBDACONV_"
_ENV = {  # field -> environment variable (the table above)
    "cache_dir": "CACHE", "tune": "TRITON_TUNE", "triton_config": "TRITON_CONFIG", "triton_gw": "TRITON_GW",
    "fast_launch": "FAST_LAUNCH", "gluon": "GLUON", "gluon_bwd": "GLUON_BWD",
    "gluon_fwd_config": "GLUON_FWD_CONFIG", "gluon_fwd_maxnreg": "GLUON_FWD_MAXNREG", "gluon_sgn": "GLUON_SGN",
    "gluon_gx_bk": "GLUON_GX_BK", "gluon_gx_maxnreg": "GLUON_GX_MAXNREG", "gluon_gw_maxnreg": "GLUON_GW_MAXNREG",
    "gluon_gw_tile": "GLUON_GW_TILE", "gluon_gw_u": "GLUON_GW_U", "gluon_gw_per_sm": "GLUON_GW_PER_SM",
    "tile_elements": "TILE_ELEMENTS", "tile_elements_gpu": "TILE_ELEMENTS_GPU",
    "cpu_compile": "CPU_COMPILE", "cpu_compile_min_taps": "CPU_COMPILE_MIN_TAPS",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    cache_dir: Optional[str] = None
    tune: bool = False
    triton_config: Optional[str] = None
    triton_gw: Optional[str] = None
    fast_launch: bool = True
    gluon: str = "1"
    gluon_bwd: str = "auto"
    gluon_fwd_config: Optional[str] = None
    gluon_fwd_maxnreg: Optional[int] = None
    gluon_sgn: str = "1"
    gluon_gx_bk: Optional[int] = None
    gluon_gx_maxnreg: Optional[str] = None
    gluon_gw_maxnreg: Optional[str] = None
    gluon_gw_tile: Optional[str] = None
    gluon_gw_u: Optional[int] = None
    gluon_gw_per_sm: Optional[int] = None
    tile_elements: int = 1 << 20
    tile_elements_gpu: int = 1 << 25
    cpu_compile: str = "auto"
    cpu_compile_min_taps: int = 1 << 22


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _parse(name: str, raw: str):
    """An environment string as the field's type (ValueError naming the variable when it is not)."""
    default = _FIELDS[name].default
    kind = _FIELDS[name].type
    try:
        if isinstance(default, bool):
            return raw not in ("", "0", "false", "False")
        if isinstance(default, int) or "int" in str(kind):
            return int(raw)
        return raw
    except ValueError:
        raise ValueError(f"{_PREFIX}{_ENV[name]}={raw!r}: expected an integer") from None


def from_environ(environ=None) -> Settings:
    """Settings read from `environ` (os.environ by default); unset variables keep the defaults."""
    environ = os.environ if environ is None else environ
    vals = {}
    for name, var in _ENV.items():
        raw = environ.get(_PREFIX + var)
        if raw is not None and raw != "":
            vals[name] = _parse(name, raw)
    return Settings(**vals)


_current = from_environ()
_hooks: list = []  # called after every change (caches of decisions that depend on a setting)


def get() -> Settings:
    """The settings in force (a frozen dataclass: read its fields)."""
    return _current


def on_change(fn):
    """Register fn() to run whenever the settings change (a cache keyed on them clears itself)."""
    _hooks.append(fn)
    return fn


def _set(s: Settings) -> None:
    global _current
    _current = s
    for fn in _hooks:
        fn()


@contextlib.contextmanager
def override(**changes):
    """Change settings for a block: `with override(tune=False): ...`; restored on exit."""
    unknown = set(changes) - set(_FIELDS)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(sorted(unknown))}; expected {', '.join(_FIELDS)}")
    before = _current
    _set(dataclasses.replace(before, **changes))
    try:
        yield _current
    finally:
        _set(before)


def reload() -> Settings:
    """Read the environment again (after a script changed os.environ)."""
    _set(from_environ())
    return _current


_ENV_DATA = getattr(os.environ, "_data", None)  # os._Environ's encoded dict (CPython, POSIX)
_INTERPRET_KEY = os.environ.encodekey("TRITON_INTERPRET") if _ENV_DATA is not None else None


def interpreting() -> bool:
    """TRITON_INTERPRET is set: triton runs kernels in its interpreter (CPU tensors; tests). Read live,
    since triton reads it live, through os._Environ's encoded dict where there is one: this runs on
    every call, and os.environ.get costs microseconds on a slow host."""
    if _ENV_DATA is None:
        v = os.environ.get("TRITON_INTERPRET")
    else:
        v = _ENV_DATA.get(_INTERPRET_KEY)
        v = None if v is None else os.environ.decodevalue(v)
    return v not in (None, "", "0")


def default_cache_dir() -> str:
    """cache_dir when unset: $XDG_CACHE_HOME/lambdaconv, else ~/.cache/lambdaconv."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "lambdaconv")


def child_environ(**updates) -> dict:
    """A copy of this process's environment with `updates` (name -> value; None removes the
    variable): the environment for a child process (benchmarks' A/B runs, tests' interpreter runs)."""
    env = dict(os.environ)
    for k, v in updates.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
