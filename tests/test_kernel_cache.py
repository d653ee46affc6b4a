"""The generated-kernel cache (backends/triton/kernels.py) runs only source text it verified.

A shared LAMBDACONV_CACHE is writable by others: a file planted there, most dangerously a
`__pycache__/*.pyc` that importlib would run without reading the source next to it, must never
execute. The kernels run under TRITON_INTERPRET=1 on CPU tensors, in a child process that has the
variable from its start (see test_triton.py).
"""
import os
import py_compile
import stat
import sys

import pytest
import torch

pytest.importorskip("triton")

HERE = os.path.dirname(os.path.abspath(__file__))

from conftest import run_interpreted  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":

    def test_interpreted_suite(tmp_path):
        run_interpreted(__file__, timeout=600)

else:
    import importlib.util
    import inspect
    import linecache

    sys.path.insert(0, HERE)
    from conftest import make_inputs, rel_err  # noqa: E402

    import lambdaconv as lc  # noqa: E402
    from lambdaconv.backends.triton import kernels  # noqa: E402

    @pytest.fixture
    def fresh_cache(lc_settings, tmp_path, monkeypatch):
        """An empty cache directory (not yet created) and no module loaded in this process."""
        d = tmp_path / "shared" / "cache"
        lc_settings(cache_dir=str(d))
        monkeypatch.setattr(kernels, "_modules", {})
        monkeypatch.setattr(kernels, "_by_key", {})
        return d

    def _plant_pyc(path: str, marker) -> str:
        """A valid, unchecked-hash .pyc for the module at `path` (importlib runs such a file
        without looking at the source) that writes `marker` and defines nothing."""
        evil = path + ".evil.py"
        with open(evil, "w") as f:
            f.write(f"open({str(marker)!r}, 'w').write('ran')\n")
        pyc = importlib.util.cache_from_source(path)
        py_compile.compile(evil, cfile=pyc, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        os.unlink(evil)
        return pyc

    def _conv(x, ws, b):
        return lc.conv2d(x, "adder", ws, b, padding=1, backend="triton")

    def _assert_reference(y, x, ws, b):
        yr = lc.conv2d(x.detach().double(), "adder", {"weight": ws["weight"].detach().double()},
                       b.detach().double(), padding=1, backend="reference")
        assert rel_err(y, yr) < 1e-6

    def _adder_case(n):
        """Inputs needing every gradient, and the text and cache path of their kernel module."""
        x, ws, b = make_inputs(2, n, 2, (5, 5), {"weight": (3, 2, 3, 3)}, dtype=torch.float32)
        text = kernels.source(lc.ir.resolve_op("adder"), "sum", True, (True,))
        return x, ws, b, text, kernels.module_path(text)

    def test_planted_bytecode_never_runs(fresh_cache, tmp_path):
        marker = tmp_path / "marker"
        x, ws, b, text, path = _adder_case(2)
        assert os.path.dirname(path) == str(fresh_cache)
        with open(path, "w") as f:  # the right source, as an earlier run (or another user) left it
            f.write(text)
        pyc = _plant_pyc(path, marker)
        assert os.path.exists(pyc)
        y = _conv(x, ws, b)
        y.sum().backward()
        assert not marker.exists(), "the planted bytecode ran"
        _assert_reference(y, x, ws, b)
        assert x.grad is not None and torch.isfinite(x.grad).all()
        # nothing compiled our module to bytecode either: the planted file is the only one
        assert os.listdir(os.path.dirname(pyc)) == [os.path.basename(pyc)]

    def test_tampered_source_is_rewritten_and_not_run(fresh_cache, tmp_path):
        marker = tmp_path / "marker"
        x, ws, b, text, path = _adder_case(1)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"open({str(marker)!r}, 'w').write('ran')\n" + text)
        y = _conv(x, ws, b)
        assert not marker.exists()
        with open(path) as f:
            assert f.read() == text  # the cache now holds the verified text
        _assert_reference(y, x, ws, b)

    def test_triton_reads_the_verified_text(fresh_cache):
        """triton compiles a kernel from inspect's source of the function: that must be the text
        the module was compiled from, even if the file on disk changes after loading."""
        spec = lc.ir.resolve_op("adder")
        text = kernels.source(spec, "sum", True, (True,))
        mod = kernels.load(text, True)
        path = kernels.module_path(text)
        with open(path, "w") as f:
            f.write("# replaced\n" * 400)
        linecache.checkcache(path)
        src = inspect.getsource(mod._fwd.fn)
        assert "def _fwd(" in src and src in text
        assert mod.__file__ == path

    def test_cache_directory_is_private(fresh_cache):
        spec = lc.ir.resolve_op("adder")
        kernels.load(kernels.source(spec, "sum", False, (False,)), True)
        mode = stat.S_IMODE(os.stat(fresh_cache).st_mode)
        assert mode & 0o077 == 0, oct(mode)
        f = [p for p in os.listdir(fresh_cache) if p.endswith(".py")]
        assert len(f) == 1 and stat.S_IMODE(os.stat(fresh_cache / f[0]).st_mode) & 0o077 == 0

    def test_cache_entry_that_is_not_a_file_is_replaced(fresh_cache):
        """A directory (or FIFO) planted under the module's name must not hang or break a load."""
        spec = lc.ir.resolve_op("adder")
        text = kernels.source(spec, "sum", False, (False,))
        path = kernels.module_path(text)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if hasattr(os, "mkfifo"):
            os.mkfifo(path)
        else:
            os.makedirs(path)
        mod = kernels.load(text, True)
        assert hasattr(mod, "_fwd")
        with open(path) as f:
            assert f.read() == text
