#!/usr/bin/env bash
# One device call: GPU tests, the decompose GPU bars, and the bench CLI on CUDA (fwd+bwd).
# Usage on the GPU machine, from the repo root:  OUT=/some/dir bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 LAMBDACONV_CACHE=${LAMBDACONV_CACHE:-/tmp/lambdaconv_cache}
mkdir -p "$OUT/bench"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
XD=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 200 python3 -m pytest -q $XD tests/gpu -p no:cacheprovider -rf > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; tail -25 "$OUT/gpu_tests.log"
timeout 90 python3 benchmarks/decompose_gpu.py --out "$OUT" --budget 60 2>&1 | tail -40
timeout 240 python3 -m lambdaconv.bench --device cuda --backward --shapes N16C64O64H56k3 \
  --ops "offset,quadratic,adder,dilation,sigmoid(A*x)*B" --rounds 10 --out "$OUT/bench" 2>&1 | tail -30
