"""lambdaconv.settings: the one place the environment is read, and its override for a block."""
import pathlib
import re

import pytest

import lambdaconv as lc
from lambdaconv import settings

SRC = pathlib.Path(lc.__file__).parent


def test_environment_read_in_the_settings_module_only():
    reads = re.compile(r"os\.environ|os\.getenv|getenv\(")
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.name != "settings.py" and reads.search(p.read_text())]
    assert offenders == []


def test_from_environ_parses_each_field():
    s = settings.from_environ({"LAMBDACONV_TRITON_TUNE": "0", "LAMBDACONV_GLUON": "strict",
                               "LAMBDACONV_GLUON_GW_U": "4", "LAMBDACONV_TILE_ELEMENTS": "128",
                               "LAMBDACONV_CACHE": "/tmp/x", "LAMBDACONV_FAST_LAUNCH": "1"})
    assert (s.tune, s.gluon, s.gluon_gw_u, s.tile_elements, s.cache_dir, s.fast_launch) == \
        (False, "strict", 4, 128, "/tmp/x", True)
    assert settings.from_environ({}) == settings.Settings()  # unset: the defaults
    with pytest.raises(ValueError, match="LAMBDACONV_GLUON_GW_U"):
        settings.from_environ({"LAMBDACONV_GLUON_GW_U": "four"})


def test_every_field_has_a_variable_and_a_documented_row():
    fields = {f for f in settings.Settings.__dataclass_fields__}
    assert fields == set(settings._ENV)
    for name, var in settings._ENV.items():
        assert f"| {name} | LAMBDACONV_{var} |" in settings.__doc__


def test_override_restores_and_runs_hooks():
    before, seen = settings.get(), []
    settings.on_change(lambda: seen.append(settings.get().tune))
    try:
        with settings.override(tune=not before.tune) as s:
            assert settings.get() is s and s.tune is not before.tune
        assert settings.get() is before
        assert seen == [not before.tune, before.tune]
    finally:
        settings._hooks.pop()
    with pytest.raises(TypeError, match="unknown setting"):
        with settings.override(tunes=False):
            pass


def test_tile_budget_follows_an_override():
    import torch
    from lambdaconv.backends.tiled import tile_budget
    w = {"w": torch.zeros(1)}
    with settings.override(tile_elements=77):
        assert tile_budget(w) == 77
    assert tile_budget(w) == settings.get().tile_elements
