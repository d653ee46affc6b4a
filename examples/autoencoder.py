"""A small convolutional autoencoder on scikit-learn's digits whose decoder upsamples with an adder
transposed convolution (lc.ConvTranspose2d, op="adder"), against the same network with
nn.ConvTranspose2d.

    python examples/autoencoder.py [--epochs 5]

Prints the test reconstruction error (MSE on standardized pixels) per epoch for both decoders.
Nothing is downloaded: the 1797 8x8 digits ship with scikit-learn.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import lambdaconv as lc
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import lambdaconv as lc

SEED = 0


def decoder(kind: str) -> nn.Module:
    # 16 x 2 x 2 -> 8 x 4 x 4 -> 8 x 8 x 8 -> 1 x 8 x 8
    if kind == "nn.ConvTranspose2d":
        up = lambda i, o: nn.ConvTranspose2d(i, o, 3, stride=2, padding=1, output_padding=1)  # noqa: E731
    else:  # -|x - w| per tap; "normal" templates on the scale of the (normalized) activations
        up = lambda i, o: lc.ConvTranspose2d(i, o, 3, stride=2, padding=1, output_padding=1,  # noqa: E731
                                             op="adder", init={"weight": "normal"})
    # adder outputs (-sum |x - w|) sit far from 0: BatchNorm after each, as AdderNet does, and a
    # 1x1 readout to the pixels
    return nn.Sequential(up(16, 8), nn.BatchNorm2d(8), nn.ReLU(), up(8, 8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 1, 1))


def model(kind: str) -> nn.Module:
    torch.manual_seed(SEED)
    enc = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
    return nn.Sequential(enc, decoder(kind))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args()
    from sklearn.datasets import load_digits
    X = load_digits().data.astype(np.float32).reshape(-1, 1, 8, 8)
    X = torch.from_numpy((X - X.mean()) / X.std())
    g = torch.Generator().manual_seed(SEED)
    perm = torch.randperm(len(X), generator=g)
    tr, te = X[perm[:1400]], X[perm[1400:]]
    for kind in ("nn.ConvTranspose2d", "lc.ConvTranspose2d(adder)"):
        net = model(kind)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        t0 = time.perf_counter()
        for ep in range(1, args.epochs + 1):
            net.train()
            order = torch.randperm(len(tr), generator=torch.Generator().manual_seed(ep))
            for i in range(0, len(tr), 64):
                xb = tr[order[i:i + 64]]
                loss = F.mse_loss(net(xb), xb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                mse = F.mse_loss(net(te), te).item()
            print(f"{kind:<26} epoch {ep}  test MSE {mse:.4f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
        assert np.isfinite(mse)


if __name__ == "__main__":
    main()
