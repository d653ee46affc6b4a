"""The untuned default (settings.tune False): the Gluon forward's config from the table of measured
winners (gluon.default_config), and the portable kernels' first candidate."""
import pytest

pytest.importorskip("triton")
from lambdaconv.backends.triton import gluon, gluon_staged, tuning  # noqa: E402

H100_SMS = 132


def _cands(cg: int, save_aux: bool = False) -> list:
    """The fitted candidates as gluon._choose builds them."""
    return [c for c in (gluon._fit(c, cg) for c in gluon.CONFIGS)
            if c is not None and not (save_aux and not gluon.keeps_winners(c))]


def test_a_full_grid_runs_the_first_staged_config():
    got = gluon.default_config(_cands(64), 16 * 56 * 56, 64, 1, False, H100_SMS)  # N16 C64 O64 56x56
    assert got == gluon.CONFIGS[0]


def test_a_small_grid_runs_k_slices():
    got = gluon.default_config(_cands(256), 16 * 14 * 14, 256, 1, False, H100_SMS)  # N16 C256 O256 14x14
    assert gluon_staged.is_staged(got) and got.k_slices > 1 and got == gluon.CONFIGS[2]
    few = gluon.default_config(_cands(8), 16 * 14 * 14, 256, 1, False, H100_SMS)  # fitted: BLOCK_K 4
    assert few.k_slices > 1 and 8 % (few.block_k * few.k_slices) == 0


def test_half_sums_run_the_four_warp_config():
    got = gluon.default_config(_cands(64), 16 * 56 * 56, 64, 1, True, H100_SMS)
    assert got == gluon.CONFIGS[1]


def test_saved_winners_run_the_first_register_config():
    cands = _cands(64, save_aux=True)
    got = gluon.default_config(cands, 16 * 14 * 14, 256, 1, False, H100_SMS)  # small grid: no staged config here
    assert not gluon_staged.is_staged(got) and got == cands[0] == gluon.CONFIGS[6]


def test_every_candidate_list_gets_one_of_its_own():
    for cg in (2, 3, 8, 64, 96, 512):
        for save in (False, True):
            cands = _cands(cg, save)
            for rows in (1, 1000, 10 ** 6):
                for half in (False, True):
                    if cands:
                        assert gluon.default_config(cands, rows, 64, 1, half, H100_SMS) in cands


def test_the_portable_kernels_run_their_first_candidate_untuned(lc_settings):
    lc_settings(tune=False, triton_config=None)
    for kind in tuning.CANDIDATES:
        assert len(tuning.configs(kind, 64, False)) == 1
