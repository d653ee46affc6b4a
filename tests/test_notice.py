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
