"""kplan.decide: which generated kernel runs each pass (what TritonConv executes and explain prints).
Decided on the host, so checked here with the GPU capability stubbed."""
import pytest
import torch

pytest.importorskip("triton")

from lambdaconv.backends.triton import kplan  # noqa: E402
from lambdaconv.geometry import make_geometry  # noqa: E402
from lambdaconv.ir import resolve_op  # noqa: E402

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.setattr(kplan, "gluon_wanted", lambda device, interp=None: device.type == "cuda" and not interp)


def decide(op, reduce=None, mode="zeros", need_x=True, need_w=None, dtype=torch.float32, device=CUDA, interp=False):
    spec = resolve_op(op)
    g = make_geometry(2, (2, 8, 9, 9), (8, 8, 3, 3), 1, 1, 1, 1, mode)
    need_w = (True,) * len(spec.weight_names) if need_w is None else need_w
    return kplan.decide(spec, g, reduce or spec.default_reduce, need_x, need_w, interp, dtype, True, device)


def test_training_kernels_by_op(gpu):
    p = decide("adder")
    assert (p.forward, p.grad_x, p.grad_w, p.saves) == ("gluon", "gluon", "gluon", None)
    p = decide("sigmoid(A*x)*B")  # two weights, no sign accumulation: the portable backward
    assert (p.forward, p.grad_x, p.grad_w) == ("gluon", "portable", "portable")
    p = decide("dilation")
    assert (p.forward, p.grad_x, p.grad_w, p.saves) == ("gluon", "select", "select", "winner")
    p = decide("x+W", "logsumexp")  # no Gluon code for logsumexp (reductions.py)
    assert (p.forward, p.grad_x, p.grad_w, p.saves) == ("portable", "portable", "portable", "value")
    p = decide("adder", mode="ignore")
    assert (p.forward, p.grad_x, p.grad_w) == ("portable", "portable", "portable")


def test_settings_change_the_plan(gpu, lc_settings):
    lc_settings(gluon_bwd="1")
    assert decide("sigmoid(A*x)*B").grad_x == "gluon"
    lc_settings(gluon_bwd="0")
    assert (decide("adder").grad_x, decide("adder").grad_w) == ("portable", "portable")
    lc_settings(triton_gw="outer")
    assert decide("adder").grad_w_portable == "outer"


def test_half_precision_and_inference(gpu):
    p = decide("dilation", need_x=False, need_w=(False,), dtype=torch.float16)
    assert p.compute == "tl.float16" and p.saves is None  # exact in half: max of rounded values
    assert decide("dilation", dtype=torch.float16).compute == "tl.float32"  # training: true winners
    assert decide("adder", dtype=torch.float16).gluon_compute == "tl.float16"  # packed half sums


def test_cpu_and_interpreter_run_portable(gpu):
    for device, interp in ((torch.device("cpu"), True), (CUDA, True)):
        p = decide("adder", device=device, interp=interp)
        assert (p.forward, p.grad_x, p.grad_w, p.grad_w_portable) == ("portable", "portable", "portable", "rows")
    assert all(line.split(":")[0] in ("forward", "grad x", "grad w") for line in decide("adder").lines())


def test_grad_overrides_take_the_portable_backward(gpu):
    from lambdaconv.ir import with_grad
    spec = with_grad(resolve_op("adder"), {"x": "hardtanh(weight - x)", "weight": "x - weight"})
    g = make_geometry(2, (2, 8, 9, 9), (8, 8, 3, 3), 1, 1, 1, 1, "zeros")
    p = kplan.decide(spec, g, "sum", True, (True,), False, torch.float32, True, CUDA)
    assert (p.forward, p.grad_x, p.grad_w) == ("gluon", "portable", "portable")
