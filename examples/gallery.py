"""Layers from the literature, each one lc.Conv2d(...) line, trained on scikit-learn's digits.

    python examples/gallery.py [--epochs 5] [--layers nn.Conv2d,SCS] [--train-size 1437]

The network, data split, seeds and optimizer are examples/demo.py's (two 3x3 conv layers with
BatchNorm and ReLU, max-pool, linear; Adam): only the two conv layers change. Prints a progress
line per epoch and a table of test accuracy and seconds per training epoch against nn.Conv2d.
docs/gallery.md shows the table and says what each layer is.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch.nn as nn

import demo  # examples/demo.py: the network, the data and the training loop
from demo import lc

SCS = "sign(s) * (abs(s) / ((sqrt(nx + 1e-6) + q) * (sqrt(nw) + q))) ** p"  # eps: sqrt'(0) is inf

# name -> (in_ch, out_ch) -> the layer; "normal" templates where the op compares x with w
GALLERY = {
    "nn.Conv2d": lambda i, o: nn.Conv2d(i, o, 3, padding=1),
    "offset": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op="offset"),
    "quadratic": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op="quadratic"),
    "AdderNet": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op="adder", init={"weight": "normal"}),
    "max-plus": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op="dilation", init={"weight": "normal"}),
    "max-sum": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op="dilation", reduce=("max", "sum"),
                                      init={"weight": "normal"}),
    "logsumexp": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op="x + W", reduce="logsumexp", init={"W": "normal"}),
    "Kerv-poly": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op={"s": "x*W"}, post="(s + c) ** 2",
                                        shapes={"c": "scalar"}, init={"c": 1.0}),
    "Kerv-Gauss": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op={"d": "(x-W)**2"}, reduce="mean",
                                         post="exp(-gamma * d)", shapes={"gamma": "filter"},
                                         init={"W": "normal", "gamma": 0.5}),
    "SCS": lambda i, o: lc.Conv2d(i, o, 3, padding=1, op={"s": "x*W", "nx": "x*x", "nw": "W*W"}, post=SCS,
                                  shapes={"p": "filter", "q": "scalar"}, init={"p": 2.0, "q": 0.1}),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--layers", default=",".join(GALLERY), help=f"comma-separated subset of: {', '.join(GALLERY)}")
    p.add_argument("--train-size", type=int, default=None, help="train on the first N training images (CI)")
    args = p.parse_args()
    names = [v.strip() for v in args.layers.split(",") if v.strip()]
    unknown = [v for v in names if v not in GALLERY]
    if unknown or args.epochs < 1:
        p.error(f"unknown layer(s) {unknown}; choose from {list(GALLERY)}" if unknown else "--epochs must be >= 1")
    demo.VARIANTS.update(GALLERY)  # demo.train builds its network from demo.VARIANTS[name]
    start = time.perf_counter()
    data = demo.load_data()
    if args.train_size:
        data = (data[0][:args.train_size], data[1][:args.train_size]) + data[2:]
    results = {name: demo.train(name, data, args.epochs) for name in names}
    # seconds per epoch: the median over epochs 2.. (the first also traces ops and warms caches)
    steady = {n: float(np.median(h["time"][1:] or h["time"])) for n, h in results.items()}
    base = steady.get("nn.Conv2d")
    print(f"\n{'layer':<11} {'params':>7} {'final acc':>9} {'best acc':>8} {'s/epoch':>8} {'vs Conv2d':>9}")
    for name, h in results.items():
        rel = f"{steady[name] / base:8.1f}x" if base else f"{'-':>9}"
        acc = h["test_acc"]
        assert np.isfinite(h["loss"][-1]), f"{name}: the loss is not finite"
        print(f"{name:<11} {h['params']:>7} {100 * acc[-1]:8.1f}% {100 * max(acc):7.1f}% {steady[name]:8.2f} {rel}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s, {demo.torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
