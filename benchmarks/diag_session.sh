#!/usr/bin/env bash
# One device call of diagnostics (session 4): kernel tables (torch.profiler), Nsight Compute
# sections of the adder's kernels, host time per call on the GPU machine, the decompose bars with
# TF32 off (the anchors' fp32 setting). Usage on the GPU machine: OUT=/some/dir bash benchmarks/diag_session.sh
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 LAMBDACONV_CACHE=${LAMBDACONV_CACHE:-/tmp/lambdaconv_cache}
P="python3 benchmarks/ncu_probe.py"
NCU="ncu --clock-control none --profile-from-start off --section SpeedOfLight --section WarpStateStats \
 --section SchedulerStats --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
 --section MemoryWorkloadAnalysis --section InstructionStats"
{
  $P --op adder --dtype fp32 --fwd-only --table
  $P --op adder --dtype fp16 --fwd-only --table
  $P --op dilation --dtype fp16 --fwd-only --table
  $P --op adder --table
} > "$OUT/tables.txt" 2>&1
echo "tables rc=$?"
timeout 150 $NCU $P --op adder > "$OUT/ncu_adder.txt" 2>&1; echo "ncu adder rc=$?"
LAMBDACONV_GLUON_FWD_CONFIG=11 timeout 60 $NCU $P --op adder --fwd-only > "$OUT/ncu_fwd_kmode3.txt" 2>&1
echo "ncu kmode3 rc=$?"
timeout 120 python3 benchmarks/host_overhead.py --device cuda --ops --direct --rounds 30 > "$OUT/host_cuda.md" 2>&1
echo "host rc=$?"
LC_TF32=0 timeout 120 python3 benchmarks/decompose_gpu.py --out "$OUT" --budget 0 > "$OUT/decompose_notf32.log" 2>&1
echo "decompose rc=$?"
