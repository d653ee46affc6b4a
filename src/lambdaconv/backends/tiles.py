"""Tiling of a direct conv: which block of outputs each step computes, and its im2col rows.

A tile is (group, output channels o0:o1, batch items n0:n1, first output dim r0:r1). Its taps
tensor is (Ot, Mt, CK) with Mt = (n1-n0) x (r1-r0) x (rest of the output positions) and CK the
group's in-channels x kernel offsets; tiles are sized so that tensor stays under a fixed element
budget, whatever the input size.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .. import settings
from ..geometry import Geometry

# The tile budget (settings.tile_elements, _gpu): elements of one (Ot, Mt, CK) taps tensor. 1M fp32 =
# 4 MiB on CPU: big enough that per-op dispatch overhead is small, small enough that a few live
# intermediates stay in the L2/L3 caches. On a GPU each torch op is a kernel launch; cache-sized tiles
# would make launches the cost, so tiles there are as large as a fixed memory budget allows (32M
# elements, 128 MiB in fp32).


@dataclass(frozen=True)
class Tile:
    group: int
    o: slice  # output channels, global indices
    n: slice  # batch items
    r: slice  # first output spatial dim

    def rows(self, g: Geometry) -> int:
        return (self.n.stop - self.n.start) * (self.r.stop - self.r.start) * math.prod(g.out_size[1:])


def tiles(g: Geometry, budget: int = None):
    """Yield the tiles covering the output, each within `budget` taps-tensor elements if possible."""
    budget = budget or settings.get().tile_elements
    ck = g.cin_per_group * g.taps
    row = math.prod(g.out_size[1:]) * ck  # elements per (o, n, r) triple
    og = g.cout_per_group
    ot = max(1, min(og, budget // max(1, row)))
    per_sample = g.out_size[0] * row * ot
    if per_sample <= budget:
        nb, rb = max(1, min(g.batch, budget // per_sample)), g.out_size[0]
    else:
        nb, rb = 1, max(1, budget // max(1, row * ot))
    for gi in range(g.groups):
        for o0 in range(gi * og, (gi + 1) * og, ot):
            o = slice(o0, min(o0 + ot, (gi + 1) * og))
            for n0 in range(0, g.batch, nb):
                for r0 in range(0, g.out_size[0], rb):
                    yield Tile(gi, o, slice(n0, min(n0 + nb, g.batch)), slice(r0, min(r0 + rb, g.out_size[0])))


def tile_cols(win: torch.Tensor, t: Tile, g: Geometry, arena: dict = None) -> torch.Tensor:
    """(Mt, CK) im2col rows of a tile from the windows view (N, C, *out, *k); one copy of the tile only,
    into a buffer kept in `arena` across tiles of the same shape."""
    cin = slice(t.group * g.cin_per_group, (t.group + 1) * g.cin_per_group)
    blk = win[t.n, cin, t.r]  # (nb, Cg, rb, *out_rest, *k)
    d = g.dims
    perm = (0,) + tuple(range(2, 2 + d)) + (1,) + tuple(range(2 + d, 2 + 2 * d))
    blk = blk.permute(perm)
    shape = (t.rows(g), g.cin_per_group * g.taps)
    if arena is None:
        return blk.reshape(shape)
    buf = buffer(arena, "cols", shape, win.dtype, win.device)
    buf.view(blk.shape).copy_(blk)
    return buf


def buffer(arena: dict, name: str, shape, dtype, device) -> torch.Tensor:
    """A scratch tensor reused across tiles of the same shape (see ir.evaluate's arena)."""
    key = (name, tuple(shape), dtype)
    buf = arena.get(key)
    if buf is None:
        buf = arena[key] = torch.empty(shape, dtype=dtype, device=device)
    return buf


def tile_out_view(y: torch.Tensor, t: Tile, g: Geometry) -> torch.Tensor:
    """A view of y (N, O, *out) for the tile, arranged (Ot, Mt) like the tile's reduced taps."""
    blk = y[t.n, t.o, t.r]  # (nb, Ot, rb, *rest)
    return blk.transpose(0, 1)  # (Ot, nb, rb, *rest): flatten dims 1: to get Mt


def read_tile(y: torch.Tensor, t: Tile, g: Geometry) -> torch.Tensor:
    return tile_out_view(y, t, g).reshape(t.o.stop - t.o.start, t.rows(g))


def write_tile(y: torch.Tensor, t: Tile, g: Geometry, vals: torch.Tensor) -> None:
    v = tile_out_view(y, t, g)
    v.copy_(vals.reshape(v.shape))


def tile_valid(valid: torch.Tensor, t: Tile, g: Geometry) -> torch.Tensor:
    """Bool (Mt, CK) validity of a tile's taps from the (K, P) mask ("ignore" padding)."""
    vk = valid.t().reshape(g.out_size + (g.taps,))[t.r]  # (rb, *rest, K)
    vk = vk.reshape(-1, 1, g.taps).expand(-1, g.cin_per_group, g.taps).reshape(-1, g.cin_per_group * g.taps)
    return vk.repeat(t.n.stop - t.n.start, 1)


def scatter_cols(gwin: torch.Tensor, t: Tile, g: Geometry, cols_grad: torch.Tensor) -> None:
    """Add a tile's (Mt, CK) column gradients into the padded-input gradient through its windows view.

    One kernel offset at a time: within one offset the windows do not overlap, so the in-place add
    is exact and deterministic (col2im without atomics)."""
    cin = slice(t.group * g.cin_per_group, (t.group + 1) * g.cin_per_group)
    d = g.dims
    nb, rb = t.n.stop - t.n.start, t.r.stop - t.r.start
    src = cols_grad.reshape((nb, rb) + g.out_size[1:] + (g.cin_per_group,) + g.kernel)
    src = src.permute((0, 2 + d - 1) + tuple(range(1, 1 + d)) + tuple(range(2 + d, 2 + 2 * d)))
    dst = gwin[t.n, cin, t.r]  # (nb, Cg, rb, *rest, *k), overlapping across k
    for k in itertools.product(*(range(s) for s in g.kernel)):
        idx = (Ellipsis,) + k
        dst[idx].add_(src[idx])
