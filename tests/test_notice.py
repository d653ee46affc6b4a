"""A first call that compiles for long prints one line saying what it compiles (lambdaconv.notice)."""
import time

from lambdaconv import notice


def test_a_long_compile_says_what_it_compiles(monkeypatch, capsys):
    monkeypatch.setattr(notice, "NOTICE_S", 0.05)
    with notice.compiling("the forward of adder"):
        time.sleep(0.3)
    assert capsys.readouterr().err.count("lambdaconv: compiling the forward of adder") == 1
    with notice.compiling("something quick"):
        pass
    time.sleep(0.1)
    assert capsys.readouterr().err == ""


def test_only_the_first_call_of_a_key(monkeypatch, capsys):
    monkeypatch.setattr(notice, "NOTICE_S", 0.05)
    monkeypatch.setattr(notice, "_seen", set())
    for _ in range(2):
        with notice.first("k", lambda: "the backward of x"):
            time.sleep(0.2)
    assert capsys.readouterr().err.count("compiling the backward of x") == 1


def test_the_line_tells_calls_of_one_run_apart():
    """Kernel size, stride / dilation when not 1, and dtype: a transposed layer's phases and an fp32
    and a bf16 call of one shape print different lines."""
    import torch

    from lambdaconv.geometry import make_geometry
    from lambdaconv.ir import resolve_op
    g = make_geometry(2, (2, 4, 9, 9), (8, 4, 2, 3), 2, 1, 1, 1, "zeros")
    text = notice.call_text("the forward", resolve_op("adder").expr, "sum", g, torch.bfloat16)
    assert text == "the forward of -abs(x - weight) (sum) for N2 C4 O8 9x9, kernel 2x3 stride 2x2, bfloat16"


def test_a_long_loop_of_steps_shows_its_progress(monkeypatch, capsys):
    """notice.steps: nothing while under NOTICE_S; then one line in a log, a bar on a terminal."""
    import io
    import sys
    monkeypatch.setattr(notice, "NOTICE_S", 0.05)
    with notice.steps("tuning fwd", 4) as advance:
        for _ in range(4):
            advance()
    assert capsys.readouterr().err == ""
    with notice.steps("tuning fwd", 4) as advance:
        for _ in range(4):
            time.sleep(0.03)
            advance()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lambdaconv: tuning fwd: ") and "/4 after" in err

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with notice.steps("tuning fwd", 4) as advance:
        for _ in range(4):
            time.sleep(0.03)
            advance()
    out = term.getvalue()
    assert out.endswith("[" + "#" * 20 + "] 4/4\n") and out.count("\r") >= 2
