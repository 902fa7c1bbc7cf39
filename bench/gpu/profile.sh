#!/bin/bash
# Nsight Compute on one MoBA forward launch of a bench case (device machine; build/ from device_run.sh).
#   bash bench/gpu/profile.sh CASE_INDEX KERNEL_REGEX [SKIP COUNT]   e.g. 0 moba_fwd_kernel
set -u
OUT=${OUT:-/tmp/moba-out}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
cd /tmp/moba-src
$NCU --clock-control none -k "regex:${2:-moba_fwd_kernel}" -s ${3:-2} -c ${4:-1} \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section LaunchStats --section SourceCounters \
  python3 bench/gpu/bench_forward.py --lib build/libmoba.so --quick --kinds ${KINDS:-local} --only "${1:-0}" > "$OUT/ncu_${1:-0}.txt" 2>&1
echo "ncu rc=$?"
grep -E "moba_|centroid_|route_|Duration|Throughput|Pipe|Warp Cycles|Issued|Eligible|Stall|Registers|Achieved Occupancy|Theoretical Occ|Block Limit|L2 Hit|L1/TEX Hit|Executed Ipc|One or More|No Eligible|Shared Memory" "$OUT/ncu_${1:-0}.txt" | head -60
