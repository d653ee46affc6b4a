"""`python -m lambdaconv.bench` end to end on a tiny shape, and its parsers and failure handling."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lambdaconv.bench import cases, main, timing

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _bench(tmp_path, *args):
    # A child process: the CPU memory measurement fixes malloc's mmap threshold for the rest of
    # the process, which would slow the other tests of this worker.
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "lambdaconv.bench", "--device", "cpu", "--out", str(tmp_path),
                        "--shapes", "N1C2O2H6k3", "--rounds", "2", *args],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_bench_rows_json_png(tmp_path):
    out = _bench(tmp_path, "--quick", "--no-compile", "--ops", "offset,adder,dilation")
    res = json.loads((tmp_path / "bench_cpu_fwd.json").read_text())
    assert (tmp_path / "bench_cpu_fwd.png").stat().st_size > 1000
    assert "| method |" in out and (tmp_path / "bench_cpu_fwd.md").exists()
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
    # the table and plot again from the JSON alone (GPU results made where matplotlib is missing)
    again = main(["--from-json", str(tmp_path / "bench_cpu_fwd.json"), "--out", str(tmp_path / "re")])
    assert again["rows"] == res["rows"] and (tmp_path / "re" / "bench_cpu_fwd.png").exists()


def test_bench_backward_with_compile(tmp_path):
    _bench(tmp_path, "--backward", "--ops", "x+W:max", "--methods", "lambdaconv,compile", "--no-memory")
    rows = json.loads((tmp_path / "bench_cpu_fwdbwd.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["lambdaconv", "compile"]
    assert all(r["ms"] > 0 and "error" not in r for r in rows), rows
    assert rows[1]["rel_err"] < 1e-4


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
