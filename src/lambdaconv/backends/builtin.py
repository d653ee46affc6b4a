"""Registration of the always-available backends: reference and tiled."""
from __future__ import annotations

from ..reference import reference_conv
from .registry import Backend, register
from .tiled import TiledConv


def _run_reference(x, bias, weights, call):
    y = reference_conv(x, call.spec, weights, bias, call.geometry, call.reduce)
    return y.to(x.dtype)


def _run_tiled(x, bias, weights, call):
    names = tuple(weights)
    return TiledConv.apply(x, bias, call.spec, call.geometry, call.reduce, names, *weights.values())


register(Backend("reference", lambda call: None, _run_reference, None,
                 "float64 reference on full broadcast tensors: small shapes only", pure=True))
register(Backend("tiled", lambda call: None, _run_tiled, 100,
                 "direct: the op evaluated tile by tile in torch ops, bounded memory, any device"))
