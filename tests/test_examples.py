"""examples/ run: the demo trains one epoch of a few variants (AdderNet's recipe among them)."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_one_epoch(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--epochs", "1",
                        "--variants", "nn.Conv2d,addernet", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "addernet" in r.stdout and any(tmp_path.glob("*.png"))


def test_autoencoder_two_epochs():
    pytest.importorskip("sklearn")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "autoencoder.py"), "--epochs", "2"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    mse = [float(line.split("test MSE ")[1].split()[0]) for line in r.stdout.splitlines() if "adder" in line]
    assert len(mse) == 2 and mse[1] < mse[0]  # the adder decoder learns


def test_gallery_one_epoch():
    """Every gallery layer trains (one epoch on 320 images, to stay fast) and the table is printed."""
    pytest.importorskip("sklearn")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "gallery.py"), "--epochs", "1", "--train-size", "320"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = r.stdout.split("vs Conv2d")[-1]
    for name in ("nn.Conv2d", "AdderNet", "max-sum", "logsumexp", "Kerv-poly", "Kerv-Gauss", "SCS"):
        assert f"\n{name} " in table, name
