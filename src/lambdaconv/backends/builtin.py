"""Registration of the always-available backends: reference and tiled."""
from __future__ import annotations

from ..reference import reference_conv
from .registry import Backend, register
from .tiled import TiledConv, tile_budget_for
from .tiles import tiles


def _run_reference(x, bias, weights, call):
    y = reference_conv(x, call.spec, weights, bias, call.geometry, call.reduce)
    return y.to(x.dtype)


def _run_tiled(x, bias, weights, call):
    names = tuple(weights)
    return TiledConv.apply(x, bias, call.spec, call.geometry, call.reduce, names, *weights.values())


def _describe_reference(call):
    g = call.geometry
    return (f"kernels:   none: torch ops on full broadcast tensors of {g.batch * g.out_channels * g.positions * g.cin_per_group * g.taps:.3g} "
            "float64 taps (small shapes only)",)


def _describe_tiled(call):
    g = call.geometry
    budget = tile_budget_for(call.device)
    n = sum(1 for _ in tiles(g, budget))
    return (f"kernels:   torch ops per tile: {n} tile{'s' if n != 1 else ''} of at most {budget} taps "
            f"(settings.tile_elements{'_gpu' if call.device.type != 'cpu' else ''}), forward and backward",)


def _reference_unsupported(call):
    if call.spec.grad:
        return "the reference differentiates its definition; grad= overrides run on the direct backends"
    return None


register(Backend("reference", _reference_unsupported, _run_reference, None,
                 "float64 reference on full broadcast tensors: small shapes only", pure=True,
                 describe=_describe_reference))
register(Backend("tiled", lambda call: None, _run_tiled, 100,
                 "direct: the op evaluated tile by tile in torch ops, bounded memory, any device",
                 describe=_describe_tiled))
