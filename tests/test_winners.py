"""Tuning winners on disk: a new process reuses what an earlier one timed (triton/winners.py)."""
import json

import pytest
import torch

import lambdaconv as lc

triton = pytest.importorskip("triton")
from lambdaconv.backends.triton import tuning, winners  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture
def fresh_cache(tmp_path, lc_settings):
    lc_settings(cache_dir=str(tmp_path), tune=True)  # winners are timed only when tuning is asked for
    winners.clear_memory()
    tuning._chosen.clear()
    yield tmp_path
    winners.clear_memory()
    tuning._chosen.clear()


def _new_process():
    winners.clear_memory()
    tuning._chosen.clear()


def test_round_trip_and_merge(fresh_cache):
    winners.put(CPU, "a", [1, 2])
    _new_process()
    assert winners.get(CPU, "a") == [1, 2]
    winners.put(CPU, "b", "portable")  # a second process adds its own
    _new_process()
    assert winners.get(CPU, "a") == [1, 2] and winners.get(CPU, "b") == "portable"
    with lc.settings.override(tune=False):  # untuned: nothing is looked up
        assert winners.get(CPU, "a") is None


def test_unreadable_file_is_empty(fresh_cache):
    winners.put(CPU, "a", [1])
    path = winners._path(CPU)
    with open(path, "w") as fh:
        fh.write("{not json")
    _new_process()
    assert winners.get(CPU, "a") is None
    winners.put(CPU, "c", [3])  # and is replaced by a good one
    with open(path) as fh:
        assert json.load(fh) == {"c": [3]}


class _Kernel:
    """Stands in for a JITFunction: records the configs it is launched with."""

    def __init__(self):
        self.fn = _Kernel.fake_kernel
        self.launched = []

    @staticmethod
    def fake_kernel():
        pass

    def __getitem__(self, grid):
        return lambda *a, **kw: self.launched.append((kw["BLOCK_M"], kw["num_warps"]))


def test_a_new_process_launches_the_stored_winner_untimed(fresh_cache, monkeypatch):
    timed = []

    def do_bench(fn, **kw):
        fn()
        timed.append(1)
        return float(len(timed) % 3)  # some candidate wins

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    kw = {"FOLD": False, "CG": 8}
    k = _Kernel()
    tuning.launch("fwd", k, (), kw, CPU, 1000, 32, 1, interpret=False)
    assert timed and len(timed) == len(tuning.configs("fwd", 32, False))
    first = k.launched[-1]
    _new_process()
    timed.clear()
    k2 = _Kernel()
    tuning.launch("fwd", k2, (), kw, CPU, 1000, 32, 1, interpret=False)
    assert not timed and k2.launched == [first]  # no timing: the winner from disk


def test_a_winner_among_fewer_candidates_is_not_reused(fresh_cache, monkeypatch):
    """A run that timed a subset of the configs (a sweep, a test narrowing CANDIDATES) keeps its
    winner under its own key: a later run with every candidate times them all again."""
    timed = []

    def do_bench(fn, **kw):
        fn()
        timed.append(1)
        return 1.0

    monkeypatch.setattr(triton.testing, "do_bench", do_bench)
    kw = {"FOLD": False, "CG": 8}
    full = list(tuning.CANDIDATES["fwd"])
    monkeypatch.setitem(tuning.CANDIDATES, "fwd", full[-2:])
    tuning._CONFIGS.clear()
    tuning.launch("fwd", _Kernel(), (), kw, CPU, 1000, 32, 1, interpret=False)
    assert len(timed) == 2
    _new_process()
    timed.clear()
    monkeypatch.setitem(tuning.CANDIDATES, "fwd", full)
    tuning._CONFIGS.clear()
    tuning.launch("fwd", _Kernel(), (), kw, CPU, 1000, 32, 1, interpret=False)
    assert len(timed) == len(tuning.configs("fwd", 32, False)) > 2
    tuning._CONFIGS.clear()
