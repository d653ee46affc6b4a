"""`python -m lambdaconv.bench` and its studies end to end on tiny shapes, the results table, and the
parsers and failure handling."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lambdaconv as lc
from lambdaconv.bench import cases, direct, main, report, study, timing

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--device", "cpu", "--threads", "1", "--rounds", "2"]


def _python(code_or_args, timeout=180):
    # A child process: the CPU memory measurement and steady_malloc fix malloc's thresholds for the
    # rest of the process, which would slow the other tests of this worker.
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _bench(tmp_path, *args):
    return _python(["-m", "lambdaconv.bench", *TINY, "--out", str(tmp_path), "--shapes", "N1C2O2H6k3", *args])


def test_compare_rows_table_png(tmp_path):
    out = _bench(tmp_path, "--quick", "--no-compile", "--ops", "offset,adder,dilation", "--json",
                 str(tmp_path / "run.json"))
    res = json.loads((tmp_path / "run.json").read_text())
    assert (tmp_path / "compare_cpu_fwd.png").stat().st_size > 1000
    assert "| method |" in out
    by = {}
    for r in res["rows"]:
        assert "error" not in r, r
        assert r["ms"] >= r["min_ms"] > 0 and r["peak_mib"] >= 0, r
        by.setdefault(r["op"], {})[r["method"]] = r
    py = {"lambda", "lambda(inline)"}  # ops with a Python lambda in methods.LAMBDAS
    expected = {"offset": {"lambdaconv", "lambdaconv[tiled]", "nn.Conv2d", "unfold"} | py,
                "adder": {"lambdaconv", "nn.Conv2d", "unfold", "cdist"} | py,
                "dilation": {"lambdaconv", "nn.Conv2d", "unfold"}}
    assert set(by) == set(expected)
    for op, ms in by.items():  # backends registered later add lambdaconv[NAME] rows
        assert expected[op] <= set(ms) and all(m.startswith("lambdaconv[") for m in set(ms) - expected[op]), ms
    assert by["offset"]["lambdaconv"]["backend"] == "decompose" and by["adder"]["lambdaconv"]["backend"] == "tiled"
    for op in expected:  # each implementation of the op computed the same function
        for m in ("lambdaconv", "cdist"):
            if m in by[op]:
                assert by[op][m]["rel_err"] < 1e-4 and by[op][m]["checked_against"] == "unfold"
    assert by["adder"]["unfold"]["vs_unfold"] == pytest.approx(1.0)
    assert res["meta"]["backward"] is False and res["meta"]["dtype"] == "float32"
    table = report.read_table(str(tmp_path / report.TABLE))
    assert len(table) == len(res["rows"]) and {r["study"] for r in table} == {"compare"}
    row = next(r for r in table if r["method"] == "lambdaconv (tiled)" and r["op"] == "adder (sum)")
    assert row["vs"] == "unfold" and float(row["ms"]) > 0 and row["mode"] == "fwd" and row["date"] and row["commit"]
    # the plot again from the JSON alone (GPU results made where matplotlib is missing)
    again = main(["--from-json", str(tmp_path / "run.json"), "--plot", str(tmp_path / "re.png")])
    assert again["rows"] == res["rows"] and (tmp_path / "re.png").exists()


def test_compare_backward_with_compile(tmp_path):
    _bench(tmp_path, "--backward", "--ops", "x+W:max", "--methods", "lambdaconv,compile", "--no-memory",
           "--json", str(tmp_path / "r.json"))
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["lambdaconv", "compile"]
    assert all(r["ms"] > 0 and "error" not in r for r in rows), rows
    assert rows[1]["rel_err"] < 1e-4
    assert (tmp_path / "compare_cpu_fwdbwd.png").exists()


_STUDIES = """
import sys
from lambdaconv.bench import main
out, tiny = sys.argv[1], ["--threads", "1", "--rounds", "2", "--out", sys.argv[1], "--device", "cpu"]
main(["decompose", "--shape", "N1C2O2H6k3", "--backward", *tiny])
main(["decompose", "--terms", "--shape", "N1C2O2H6k3", *tiny])
main(["direct", "--shapes", "N1C2O2H6k3", "--ops", "adder", "--no-peers", "--settings", "tile_elements=64", *tiny])
main(["host", "--rounds", "2", *tiny])
main(["kernels", "--shape", "N1C2O2H6k3", "--top", "2", "--settings", "", "--settings", "tile_elements=64", *tiny])
"""


def test_studies_on_cpu(tmp_path):
    """Every study's CPU path, each appending its rows to one table."""
    path = tmp_path / report.TABLE
    path.write_text(report._PREAMBLE + report.table([{"study": "older", "method": "kept", "ms": 1.0}], {}))
    _python(["-c", _STUDIES, str(tmp_path)])
    rows = report.read_table(str(path))
    assert rows[0]["study"] == "older" and rows[0]["method"] == "kept"  # old rows stay, first
    by = {}
    for r in rows[1:]:
        by.setdefault(r["study"], []).append(r)
    assert set(by) == {"decompose", "decompose terms", "direct", "host", "kernels"}
    dec = {r["method"]: r for r in by["decompose"]}
    assert set(dec) == {"nn.Conv2d", "hand offset", "plain offset", "lc offset", "lc quadratic"}
    assert all(float(r["ms"]) > 0 and r["vs"] == "nn.Conv2d" and r["mode"] == "fwd+bwd" for r in dec.values())
    assert {r["method"] for r in by["decompose terms"]} >= {"decompose", "tiled"}
    assert {(r["mode"], r["method"]) for r in by["direct"]} == {
        (m, n) for m in ("fwd", "fwd+bwd") for n in ("lambdaconv", "lambdaconv [tile_elements=64]")}
    assert len(by["host"]) == 2 * 2 * 5 and all(float(r["ms"]) > 0 for r in by["host"])  # dtypes x modes x layers
    calls = [r for r in by["kernels"] if r["method"].startswith("call")]
    assert [c["method"] for c in calls] == ["call [default settings]", "call [tile_elements=64]"]
    assert len(by["kernels"]) == 2 + 2 * 2


def test_sass_without_gpu(tmp_path):
    pytest.importorskip("triton.experimental.gluon")
    out = _python(["-m", "lambdaconv.bench", "sass", "--kernel", "fwd", "--out", str(tmp_path)])
    assert "instructions per tap" in out
    (row,) = report.read_table(str(tmp_path / report.TABLE))
    assert row["study"] == "sass" and "instructions per tap" in row["note"] and row["device"].startswith("sm_90")


def test_table_append_keeps_rows(tmp_path):
    meta = {"date": "2026-01-01", "commit": "abc1234", "device": "dev"}
    report.append(str(tmp_path), [{"study": "a", "method": "m|1", "ms": 1.23456, "ratio": 0.5}], meta)
    report.append(str(tmp_path), [{"study": "b", "ms": None, "note": "two\nlines"}], dict(meta, commit="def5678"))
    text = (tmp_path / report.TABLE).read_text()
    assert text.count("| date |") == 1 and text.startswith("# lambdaconv benchmark results")
    rows = report.read_table(str(tmp_path / report.TABLE))
    assert [(r["study"], r["commit"], r["method"], r["ms"], r["note"]) for r in rows] == [
        ("a", "abc1234", "m/1", "1.235", ""), ("b", "def5678", "", "", "two lines")]
    assert report.commit() != ""


def test_settings_and_sweep_configs():
    assert study.parse_settings("gluon_bwd=1, gluon_fwd_maxnreg=80,tune=0") == {
        "gluon_bwd": "1", "gluon_fwd_maxnreg": 80, "tune": False}
    assert study.parse_settings("") == {}
    for bad in ("nonsense=1", "gluon_bwd", "gluon_fwd_maxnreg=x"):
        with pytest.raises(ValueError):
            study.parse_settings(bad)
    gluon = SimpleNamespace(CONFIGS=[(1, 2), (3, 4, 4), (5, 6)])
    staged = SimpleNamespace(is_staged=lambda c: len(c) == 3)
    args = SimpleNamespace(configs="0,2", extra="7,8,9;", staged_only=False)
    assert direct._configs(args, gluon, staged) == [(1, 2), (5, 6), (7, 8, 9)]
    args = SimpleNamespace(configs=None, extra=None, staged_only=True)
    assert direct._configs(args, gluon, staged) == [(3, 4, 4)]
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs --device cuda"):
            direct.main(["--sweep", "--device", "cpu"])


def test_shape_syntax():
    s = cases.parse_shape("N8C32O64H32W16k5s2g4")
    assert (s.n, s.c, s.o, s.h, s.w, s.k, s.s, s.p, s.d, s.g) == (8, 32, 64, 32, 16, 5, 2, 2, 1, 4)
    assert s.out_hw == (16, 8) and s.taps == 8 * 64 * 16 * 8 * 8 * 25
    assert str(s) == "N8C32O64H32W16k5s2g4" and str(cases.parse_shape("k3N1H4O2C2p0")) == "N1C2O2H4k3p0"
    for bad in ("N8C32O32H32", "N8C32O32H32k3x1", "N8C3O32H32k3g2", "N8C32O32H32k3N2", "nonsense", "N1C1O1H1k5p0"):
        with pytest.raises(ValueError):
            cases.parse_shape(bad)


def test_op_syntax():
    ops = cases.parse_ops("adder, maximum(x,W)*A:logsumexp ,sigmoid(A*x)*B")
    assert [(o.op, o.reduce) for o in ops] == [("adder", "sum"), ("maximum(x,W)*A", "logsumexp"),
                                               ("sigmoid(A*x)*B", "sum")]
    assert ops[0].is_op("-abs(x-W)", "sum") and not ops[0].is_op("x+W", "sum")
    assert cases.parse_ops("x+W:max")[0].is_op("x+W", "max")
    for bad in ("x+W:median", "foo(x)*W", "x+1"):
        with pytest.raises(ValueError):
            cases.parse_ops(bad)


def test_failures_become_errors():
    """A peer that runs out of memory or raises gets an error, and the others are still timed."""
    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 27.6 GiB")

    def later(n=[0]):  # fails in the timed rounds, after the warm-up
        n[0] += 1
        if n[0] > 3:
            raise RuntimeError("illegal memory access\nmore")

    times, errors = timing.interleaved({"ok": lambda: None, "oom": oom, "later": later}, 3, torch.device("cpu"))
    assert set(times) == {"ok"} and times["ok"][0] >= times["ok"][1] >= 0
    assert errors == {"oom": "out of memory", "later": "RuntimeError: illegal memory access"}


def test_model_study_times_whole_training_steps(tmp_path):
    """--model: every 3x3 conv of the network is the op; rows per (op, mode, dtype), ratios to nn.Conv2d."""
    from lambdaconv.bench import model
    net = model.resnet(model.conv_maker(cases.parse_ops("adder")[0]), *model.MODELS["resnet18"][:2], 10)
    kinds = [type(m).__name__ for m in net.modules()]
    assert kinds.count("Conv2d") == 16 + 1 + 3  # lc layers (16 in the blocks), the stem and 3 shortcuts
    assert sum(isinstance(m, lc.Conv2d) for m in net.modules()) == 16
    rows = main(["--model", "small", "--device", "cpu", "--ops", "offset,adder", "--rounds", "1",
                       "--no-memory", "--dtypes", "float32", "--out", str(tmp_path)])
    got = {(r["method"], r["mode"]) for r in rows}
    assert got == {(m, "train step, eager") for m in ("nn.Conv2d", "offset", "adder")}
    assert all(r["ms"] > 0 and r["vs"] == "nn.Conv2d" for r in rows)
    assert (tmp_path / "results.md").exists() and (tmp_path / "model_small_cpu.png").exists()
    with pytest.raises(SystemExit, match="bad --modes"):
        main(["--model", "small", "--device", "cpu", "--modes", "fast"])


def test_layers_study_rows_against_references(tmp_path):
    """layers: each layer and its reference layer timed together, the ratio taken against it."""
    from lambdaconv.bench import layers
    rows = layers.main(["--device", "cpu", "--rounds", "1", "--shape", "N1C4O4H8k3",
                        "--layers", "scs,max-sum,T-adder", "--out", str(tmp_path)])
    got = {(r["mode"], r["method"]): r for r in rows}
    assert {m for _, m in got} == {"nn.Conv2d", "scs", "max-plus", "max-sum", "adder", "T-adder"}
    for mode in ("fwd", "fwd+bwd"):
        for name, ref in (("scs", "nn.Conv2d"), ("max-sum", "max-plus"), ("T-adder", "adder")):
            r = got[(mode, name)]
            assert r["vs"] == ref and abs(r["ratio"] - r["ms"] / got[(mode, ref)]["ms"]) < 1e-9
    assert len(report.read_table(str(tmp_path / report.TABLE))) == len(rows)
    with pytest.raises(SystemExit):
        layers.main(["--device", "cpu", "--layers", "nope"])


def test_rows_say_when_a_gluon_kernel_fell_back(monkeypatch, capsys):
    """A run in which a Gluon kernel failed (and the portable one ran) says so in every row."""
    import argparse

    from lambdaconv.backends.triton import gluon
    from lambdaconv.bench import study
    monkeypatch.setattr(gluon, "FALLBACKS", [])
    with pytest.warns(RuntimeWarning, match="Gluon forward is not available"):
        gluon._warn(RuntimeError("no Gluon"))
    rows = study.finish("direct", [{"op": "adder", "ms": 1.0}], argparse.Namespace(note=None, out=None),
                        torch.device("cpu"))
    assert "Gluon fell back to portable in this run (RuntimeError: no Gluon)" in rows[0]["note"]
