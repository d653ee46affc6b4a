"""The triton backend's host-side caches and shortcuts (backends/triton/function.py, tuning.py).

What is cached per call key must give what the uncached code gives, and a change of settings between
calls must still be followed. Runs in this process without triton kernels:
the launch path is exercised with stub kernels that record their launches.
"""

import pytest
import torch

pytest.importorskip("triton")

import lambdaconv as lc  # noqa: E402
from lambdaconv.backends.triton import function as F  # noqa: E402
from lambdaconv import settings  # noqa: E402
from lambdaconv.backends.triton import tuning  # noqa: E402
from lambdaconv.geometry import make_geometry  # noqa: E402


def test_interpreting_reads_like_os_environ(monkeypatch):
    for value, on in (("1", True), ("", False), ("0", False), ("yes", True)):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert settings.interpreting() is on
    monkeypatch.delenv("TRITON_INTERPRET")
    assert settings.interpreting() is False


def test_memo_caches_and_falls_back_for_unhashable_keys():
    cache, made = {}, []

    def make():
        made.append(1)
        return object()

    assert tuning.memo(cache, ("k", 1), make) is tuning.memo(cache, ("k", 1), make)
    assert len(made) == 1
    a, b = tuning.memo(cache, ("k", [1]), make), tuning.memo(cache, ("k", [1]), make)  # unhashable: per call
    assert a is not b and len(made) == 3 and len(cache) == 1


def test_consts_cached_per_geometry():
    g = make_geometry(2, (2, 4, 7, 6), (6, 2, 3, 3), 2, 1, 1, 2, "zeros")
    for in_pad in (True, False):
        assert F.consts(g, in_pad) is F.consts(g, in_pad)
        assert F.consts(g, in_pad) == F._consts(g, in_pad)
    assert F.consts(g, True) != F.consts(g, False)


def test_configs_follow_the_settings(lc_settings):
    lc_settings(triton_config=None, tune=True)
    tuned = tuning.configs("fwd", 64, False)
    assert len(tuned) > 1
    lc_settings(tune=False)
    assert tuning.configs("fwd", 64, False) == tuned[:1]
    lc_settings(triton_config="32,16,4,1,2")
    assert tuning.configs("fwd", 64, False) == ((32, 16, 4, 1, 2),)
    assert tuning.configs("fwd", 64, True) == ((16, 16, 1, 1, 2),)  # interpreted: always the small one


@pytest.mark.parametrize("wshape,full,groups", [
    ((6, 2, 3, 3), (6, 2, 3, 3), 2),  # contiguous, full size: the strided-view path
    ((4, 4, 3, 2), (4, 4, 3, 2), 1),
    ((6, 1, 1, 1), (6, 2, 3, 3), 3),  # broadcast: the generic path
    ((1, 4, 3, 2), (5, 4, 3, 2), 1),
    (None, (4, 4, 3, 2), 1),  # full size, not contiguous
])
def test_weight_layouts_as_permute(wshape, full, groups):
    w = torch.randn(4, 4, 2, 3).transpose(2, 3) if wshape is None else torch.randn(wshape)
    g = make_geometry(2, (1, full[1] * groups, 8, 8), full, 1, 0, 1, groups, "zeros")
    G, OG, CG, T = g.groups, g.cout_per_group, g.cin_per_group, g.taps
    ref = w.expand(full).reshape(G, OG, CG, T)
    want = {F._FWD_LAYOUT: ref.permute(0, 2, 3, 1).reshape(G, CG * T, OG), F._BWD_LAYOUT: ref.permute(0, 3, 1, 2)}
    for dims, expect in want.items():
        got = F._w_layout(w, g, dims, F._layout_view(g, dims), full)
        assert got.is_contiguous() and torch.equal(got, expect)


@pytest.mark.parametrize("groups,kernel", [(1, (3, 3)), (2, (3, 3)), (1, (2, 3, 2)), (3, (5,))])
@pytest.mark.parametrize("splits", [1, 3])
def test_slabs_to_grads_as_sum_permute(groups, kernel, splits):
    d = len(kernel)
    og, cg = 4, 2
    g = make_geometry(d, (1, cg * groups) + (8,) * d, (og * groups, cg) + kernel, 1, 0, 1, groups, "zeros")
    slab = torch.randn(splits, groups, g.taps, og, cg)
    got = F._slabs_to_grads([slab], g, ("w",), (True,), F._slab_view(g))["w"]
    old = slab.sum(0).permute(0, 2, 3, 1).reshape((og * groups, cg) + kernel)  # the uncached code's
    assert torch.equal(got, old) and got.stride() == old.stride()


class _Stub:
    """A kernel module whose kernels record their launches instead of running."""

    def __init__(self, log):
        self.log = log

    def __getattr__(self, name):
        log = self.log

        class _K:
            def __getitem__(self, grid):
                return lambda *args, **kw: log.append((name, grid, args, kw))

        return _K()


def test_host_path_with_stub_kernels(monkeypatch, lc_settings):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so that the triton backend takes CPU tensors
    lc_settings(triton_gw=None)
    monkeypatch.setattr(F, "_PLANS", {})  # no stub module left in the real caches
    log, built = [], []

    def kernels(*key):
        built.append(key)
        return _Stub(log)

    monkeypatch.setattr(F, "kernels", kernels)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)

    def step(op):
        log.clear()
        y = lc.conv2d(x, op, {"weight": w}, b, padding=1, backend="triton")
        grads = torch.autograd.grad(y, [x, w, b], torch.ones_like(y))
        assert [t.shape for t in grads] == [x.shape, w.shape, b.shape]
        return [(name, kw) for name, _, _, kw in log]

    first = step("adder")
    assert step("adder") == first and len(built) == 1  # the second call reuses the plan
    names = [n for n, _ in first]
    assert names == ["_fwd", "_bwd_x", "_bwd_w_rows"]
    k = F._consts(make_geometry(2, (2, 4, 6, 6), (4, 4, 3, 3), 1, 1, 1, 1, "zeros"), True)
    assert all(kw[n] == v for _, kw in first for n, v in k.items())
    lc_settings(triton_gw="outer")  # a settings change drops the kernel plans: the next call re-plans
    assert [n for n, _ in step("adder")] == ["_fwd", "_bwd_x", "_bwd_w"]
    assert [n for n, _ in step("dilation")] == ["_fwd", "_bwd_select"]
    assert len(built) == 3
    # only the bias needs a gradient: a backward with no kernel, the bias gradient from torch
    log.clear()
    y = lc.conv2d(x.detach(), "adder", {"weight": w.detach()}, b, padding=1, backend="triton")
    (gb,) = torch.autograd.grad(y, [b], torch.ones_like(y))
    assert [n for n, *_ in log] == ["_fwd"] and torch.equal(gb, torch.full((4,), 72.0))
