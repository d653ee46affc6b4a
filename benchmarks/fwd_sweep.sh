#!/usr/bin/env bash
# Forward configs of the Gluon kernel, each in its own process (LAMBDACONV_GLUON_FWD_CONFIG: an index into
# gluon.CONFIGS or a config written out): do_bench of the call and the profiler kernel table (ncu_probe --table).
export PYTHONPATH=src LAMBDACONV_CACHE=/tmp/lambdaconv_cache LAMBDACONV_GLUON=strict
for op in adder; do
for cfg in 13 14 "64,64,2,4,8,4,8,4,1,1" "128,64,2,4,8,4,8,8,1,1" "64,64,2,4,8,4,8,4,1,2" "64,64,8,4,8,4,8,4,1,1" "64,64,4,4,16,8,4,2,1,1" "128,64,4,4,16,8,4,4,1,1" "128,64,2,8,8,4,8,4,1,1" "128,64,4,8,8,4,8,4,1,1"; do
  echo "== $op cfg $cfg"
  LAMBDACONV_GLUON_FWD_CONFIG=$cfg timeout 60 python3 benchmarks/ncu_probe.py --op $op --fwd-only --table 2>&1 | grep -v "tuned:" | head -5
done; done
