"""Tile configs per kernel and shape, chosen by timing a few candidates once per shape bucket.

Kept modest (triton.autotune style, but keyed on our own buckets): a handful of configs per kernel,
timed with triton.testing.do_bench the first time a (kernel, geometry, batch-size bucket) is seen,
the winner kept for the process. Every tuned kernel overwrites its outputs (no accumulation), so
running candidates on the real arguments is harmless. Under TRITON_INTERPRET=1 the first small
config is used untimed.
"""
from __future__ import annotations

import math

import torch

from ... import notice, settings
from . import winners
from ...settings import interpreting

_chosen: dict = {}

# (BLOCK_M, BLOCK_N, num_warps, num_stages, unroll of the K loop): the 2-d accumulator tile of the
# outer-product kernels. Measured on an H100 (N16 C64 O64 56x56, fp32 adder forward): 64x32 2 warps
# 0.33 ms, 256x32 8 warps 0.36, 128x64 4 warps 0.44, 128x64 8 warps 0.77; pipelining (num_stages > 1)
# did not help.
CANDIDATES = {
    "fwd": [(64, 32, 2, 1, 1), (64, 32, 2, 1, 4), (128, 32, 4, 1, 4), (256, 32, 8, 1, 1), (128, 64, 4, 1, 4)],
    "bwd_x": [(64, 32, 2, 1, 1), (64, 32, 2, 1, 4), (256, 32, 8, 1, 1), (128, 64, 4, 1, 4)],
}
_SECOND = {"fwd": "BLOCK_N", "bwd_x": "BLOCK_C"}

# Index arithmetic in the kernels is 32-bit (the fast path) while every tensor they index has at
# most INDEX_LIMIT elements, 64-bit past it (the I64 constexpr; CUDA tensors of over 2**31 elements
# failed to compile or would wrap). The margin under 2**31 covers the lanes a tile computes past a
# tensor's end (at most a few hundred rows). Module-level: tests lower it to run the 64-bit code on
# small tensors (clear function._CONSTS and function._PLANS after changing it).
INDEX_LIMIT = 2 ** 31 - 2 ** 20
GRID_YZ = 65535  # CUDA's largest grid y and z


def index_flags(g) -> tuple:
    """(I64, FOLD) of a Geometry, the constexprs every kernel takes (templates.GEOMETRY).
    I64: some tensor a kernel of this call indexes has more than INDEX_LIMIT elements: the input as
    given and padded, the output (and the upstream gradient, the winners), the Gluon input
    gradient's zero-padded upstream gradient (full-convolution size), the weights.
    FOLD: a grid's y or z could pass GRID_YZ (out or in channels per group in y, groups in z, the
    weight gradients' groups x taps in y): grids are then launched folded into x (fold())."""
    n, c, o, taps = g.batch, g.in_channels, g.out_channels, g.taps
    padded, raw = math.prod(g.padded_size), math.prod(g.in_size)
    full = math.prod(s + (k - 1) * d for s, k, d in zip(g.padded_size, g.kernel, g.dilation))
    elems = max(n * c * max(padded, raw), n * o * max(g.positions, full), o * g.cin_per_group * taps)
    return elems > INDEX_LIMIT, max(g.groups * taps, g.cout_per_group, g.cin_per_group) > GRID_YZ


def fold(grid: tuple, folded: bool) -> tuple:
    """The launch grid of a kernel whose grid is `grid` (x, y, z): as it is, or, where the kernel's
    FOLD is set, (x * y * z, 1, 1), which its _pid3 unfolds."""
    if not folded:
        return grid
    total = grid[0] * grid[1] * grid[2]
    if total > 2 ** 31 - 1:
        raise ValueError(f"lambdaconv: the triton kernels' grid {grid} has more than 2**31 - 1 programs")
    return (total, 1, 1)


def max_splits(w_elems: int, i64: bool) -> int:
    """The most splits a weight-gradient kernel may use: its partial sums (SPLITS, *weight) are
    indexed split * weight size + offset, in 32 bits unless I64; and splits are a grid's z."""
    return GRID_YZ if i64 else max(1, min(GRID_YZ, INDEX_LIMIT // max(1, w_elems)))


MEMO_MAX = 4096  # entries per host-side cache: a new batch size makes a new geometry


def memo(cache: dict, key, make):
    """cache[key], made by make() on the first call. Symbolic sizes (torch.compile) make the key
    unhashable: then made per call, uncached."""
    try:
        hit = cache.get(key)
    except TypeError:
        return make()
    if hit is None:
        if len(cache) >= MEMO_MAX:
            cache.clear()
        hit = cache[key] = make()
    return hit


_SMS: dict = {}


def sm_count(device) -> int:
    if device.type != "cuda":
        return 2
    if device.index is None:  # the current device: may change between calls
        return torch.cuda.get_device_properties(device).multi_processor_count
    n = _SMS.get(device)
    if n is None:
        n = _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return n


def _pow2_at_most(v: int, cap: int) -> int:
    return max(1, min(cap, 1 << max(0, math.ceil(math.log2(max(1, v))))))


_CONFIGS: dict = {}


def configs(kind: str, n_cols: int, interpret=None) -> tuple:
    """The candidate configs (one: untuned). Cached per (kind, n_cols) and the settings they
    depend on (tests and sweeps change them between calls)."""
    if interpret is None:
        interpret = interpreting()
    forced = tune = None
    if not interpret:
        s = settings.get()
        forced, tune = s.triton_config, s.tune  # forced: "BLOCK_M,BLOCK_N,warps,stages,unroll" (debugging)
    return memo(_CONFIGS, (kind, n_cols, interpret, forced, tune), lambda: _configs(kind, n_cols, interpret, forced,
                                                                                     tune))


def _configs(kind, n_cols, interpret, forced, tune) -> tuple:
    if interpret:
        return ((16, _pow2_at_most(n_cols, 16), 1, 1, 2),)
    if forced:
        bm, bn, w, st, un = (int(v) for v in forced.split(","))
        return ((bm, _pow2_at_most(n_cols, bn), w, st, un),)
    seen, out = set(), []
    for bm, bn, w, st, un in CANDIDATES[kind]:
        bn = _pow2_at_most(n_cols, bn)  # no wasted columns for few channels per group
        if bn * 4 <= 64 and bm < 256:  # thin tiles: more rows keep the threads busy
            bm *= 2
        if (bm, bn, un) not in seen:
            seen.add((bm, bn, un))
            out.append((bm, bn, w, st, un))
    return tuple(out if tune else out[:1])


def _run(kind, kernel, args, kw, rows, n_cols, groups, cfg) -> None:
    bm, bn, w, st, un = cfg
    grid = fold(((rows + bm - 1) // bm, (n_cols + bn - 1) // bn, groups), kw["FOLD"])
    kernel[grid](*args, **kw, BLOCK_M=bm, **{_SECOND[kind]: bn}, UNROLL=un, num_warps=w, num_stages=st)


def launch(kind, kernel, args, kw, device, rows, n_cols, groups, interpret=None, kw_key=None):
    """Run `kernel` over a (rows / BLOCK_M, n_cols / BLOCK_N, groups) grid with the chosen config.
    interpret: interpreting(), where the caller has read it; kw_key: tuple(sorted(kw.items())),
    where the caller has it cached (the tuner's key)."""
    cands = configs(kind, n_cols, interpret)
    if len(cands) == 1:
        _run(kind, kernel, args, kw, rows, n_cols, groups, cands[0])
        return
    key = (kind, id(kernel), tuple(sorted(kw.items())) if kw_key is None else kw_key,
           1 << max(0, (rows - 1).bit_length()))
    cfg = _chosen.get(key)
    if cfg is None:
        cfg = _stored(kind, kernel, key, device, cands)
    if cfg is None:
        from triton.testing import do_bench

        best = None
        with notice.steps(f"tuning {kind} ({len(cands)} configs, once per shape bucket)", len(cands)) as advance:
            for c in cands:
                try:
                    ms = do_bench(lambda: _run(kind, kernel, args, kw, rows, n_cols, groups, c), warmup=10, rep=40,
                                  return_mode="median")
                except Exception as err:  # a config the compiler rejects (e.g. out of resources)
                    if "OutOfResources" not in type(err).__name__ and "out of resource" not in str(err):
                        raise
                    continue
                finally:
                    advance()
                if best is None or ms < best[0]:
                    best = (ms, c)
        cfg = _chosen[key] = best[1]
        winners.put(device, _disk_key(kind, kernel, key, cands), list(cfg))
    _run(kind, kernel, args, kw, rows, n_cols, groups, cfg)


def _disk_key(kind, kernel, key, cands) -> str:
    fn = getattr(kernel, "fn", kernel)  # a JITFunction's Python function: its generated module's name
    # the candidates too: a winner among fewer configs is no answer for more
    return winners.key("portable", kind, fn.__module__, fn.__name__, key[2], key[3], tuple(map(tuple, cands)))


def _stored(kind, kernel, key, device, cands):
    """The winner another process timed for this kernel and bucket (one of cands), or None."""
    got = winners.get(device, _disk_key(kind, kernel, key, cands))
    cfg = next((c for c in cands if got is not None and list(c) == got), None)
    if cfg is not None:
        _chosen[key] = cfg
    return cfg
