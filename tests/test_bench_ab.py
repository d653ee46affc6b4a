"""bench.ab's bookkeeping (the timing itself needs CUDA: it runs on the device)."""
from lambdaconv.bench import ab


def test_cases_table_and_write(tmp_path):
    keys = ab.cases(["adder", "x+W:logsumexp"], ["N16C64O64H56k3"], ["float32"], ["fwd", "fwdbwd"])
    assert keys[0] == "adder||16,64,64,56,3|float32|fwd" and keys[-1].startswith("x+W|logsumexp|")
    runs = {"old": [{k: [2.0, 1.0] for k in keys}, {k: [4.0, None] for k in keys}],
            "new": [{k: [1.0, 1.0] for k in keys}, {k: [1.0, None] for k in keys}]}
    rows = ab._write(str(tmp_path), keys, runs)
    k, oc, nc, rc, og, ng, rg = rows[0]
    assert (oc, nc, rc, og, ng, rg) == (3.0, 1.0, 1.0 / 3.0, 1.0, 1.0, 1.0)  # medians over rounds; None skipped
    assert (tmp_path / "ab.json").exists() and "2 rounds" in (tmp_path / "ab.md").read_text()
