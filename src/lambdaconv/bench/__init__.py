"""Benchmarks you can run: `python -m lambdaconv.bench [STUDY] [options] [--out DIR]`.

    (none) / compare  lambdaconv (backend "auto", and every other backend that supports the call)
                      against nn.Conv2d at the same shape, unfold + broadcast (eager and
                      torch.compile), torch.cdist for the L1 op and pytorch-nd-semiconv when
                      installed: medians, speedups, peak memory, (CUDA) roofline fraction; a PNG
    decompose         separable ops (offset, quadratic) against nn.Conv2d; --terms: the term threshold
    direct            direct ops against their peers: fwd, fwd GPU work, fwd+bwd; --sweep: Gluon configs
    host              host time per call of tiny layers against nn.Conv2d
    kernels           per-kernel times of one call under settings; --ncu: a driver for Nsight Compute
    sass              instructions per tap of a generated Gluon kernel (no GPU needed)

Every study times with bench.timing (interleaved rounds, medians; CUDA graphs for GPU work), divides
by one roofline constant (timing.ROOFLINE_TAPS_PER_S) and appends its rows to DIR/results.md
(report.append). `python -m lambdaconv.bench STUDY -h` lists a study's options; docs/guide.md
explains the numbers, docs/perf_notes.md what they showed.
"""
from .cli import STUDIES, main, parser, run

__all__ = ["main", "parser", "run"]
