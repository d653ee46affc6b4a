"""Benchmarks you can run: `python -m lambdaconv.bench [--device cuda] [--quick] [--backward] --out DIR`.

Times lambdaconv (backend "auto", and every other backend that supports the call) against
nn.Conv2d at the same shape, unfold + broadcast (eager and torch.compile), torch.cdist for the L1
op and pytorch-nd-semiconv when installed, interleaved in one run, and reports medians, speedups,
peak memory and (CUDA) the fraction of the CUDA-core roofline. `python -m lambdaconv.bench -h`
lists the options; docs/guide.md explains the numbers.
"""
from .cli import main, parser, run

__all__ = ["main", "parser", "run"]
