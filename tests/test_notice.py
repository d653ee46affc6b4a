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
