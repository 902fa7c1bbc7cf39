#!/bin/bash
# One device call that checks switches beside the default (docs/cuda.md, The device checks of v25-v27; it
# first ran at 424a422, 2026-12-07 21:45 UTC, when v26 and v27 were opt-ins; since a85e5be they are the
# default and the script sets their old paths beside it; v25 was removed after it): v26's
# MOBA_CUDA_ROUTE_ROWTHR=0, v27's MOBA_CUDA_KBM_FORK=0, v28's MOBA_CUDA_ROUTE_FIRST32=0. Most important first,
# each phase under a timeout, logs and a summary in $OUT (at most 8 files come back from the device tool):
#   1. test_cuda_forward + golden in the default and each switch's mode (routing: 0 rows may differ)
#   2. ab.py: 32K and 64K, random / local / clustered, the default beside each switch (outputs must be equal)
#   3. memcheck and racecheck (quick subset) on the default and the switches
#   4. Nsight Compute on the 64K route kernel: where its warps wait (OPTIN_PROFILE=0 skips it)
# Prepare here: bash tests/gpu/prebuild.sh; the golden case in .golden/; carry .golden and .prebuilt.
#   bash tests/gpu/optin_checks.sh        (about 5 minutes on an H100)
set -u
REAL_OUT=${OUT:-/tmp/moba-out}
mkdir -p "$REAL_OUT"
export OUT=/tmp/moba-optin
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; git rev-parse --short HEAD 2>/dev/null; } \
  > "$REAL_OUT/gpu.txt"
cat "$REAL_OUT/gpu.txt"

MODES="MOBA_CUDA_DEFAULT=1"
MODES+=";MOBA_CUDA_ROUTE_ROWTHR=0;MOBA_CUDA_ROUTE_ROWTHR=0 MOBA_CUDA_ROUTE_SORT=0"
MODES+=";MOBA_CUDA_KBM_FORK=0;MOBA_CUDA_KBM_FORK=0 MOBA_CUDA_KBM_RATIO=6 MOBA_CUDA_KBM_PAIRS=1"
MODES+=";MOBA_CUDA_ROUTE_FIRST32=0"
TEST_MODES="$MODES" timeout 300 bash tests/gpu/device_run.sh test > "$REAL_OUT/test.txt" 2>&1
echo "test rc=$?"
grep -E "rc=|checks passed|FAILED|routing:|max o err" "$REAL_OUT/test.txt" | tail -50

AB_CASES=0,1 AB_SETS="MOBA_CUDA_DEFAULT=1;MOBA_CUDA_ROUTE_ROWTHR=0;MOBA_CUDA_KBM_FORK=0;MOBA_CUDA_ROUTE_FIRST32=0" \
  AB_ARGS="--kind random,local,clustered --top 6" timeout 180 bash tests/gpu/device_run.sh ab > "$REAL_OUT/ab.txt" 2>&1
echo "ab rc=$?"
tail -90 "$REAL_OUT/ab.txt"

SAN_MODES="MOBA_CUDA_DEFAULT=1"
SAN_MODES+=";MOBA_CUDA_ROUTE_ROWTHR=0;MOBA_CUDA_KBM_FORK=0 MOBA_CUDA_KBM_RATIO=6 MOBA_CUDA_KBM_PAIRS=1"
RACE_MODES="MOBA_CUDA_DEFAULT=1;MOBA_CUDA_ROUTE_ROWTHR=0"
SAN_MODES="$SAN_MODES" RACE_MODES="$RACE_MODES" timeout 240 bash tests/gpu/device_run.sh sanitize \
  > "$REAL_OUT/sanitize.txt" 2>&1
echo "sanitize rc=$?"
grep -E "rc=|ERROR SUMMARY|RACECHECK SUMMARY|FAILED" "$REAL_OUT/sanitize.txt" | tail -30

if [ "${OPTIN_PROFILE:-1}" = 1 ]; then
  OUT="$REAL_OUT" timeout 150 bash bench/gpu/profile_sass.sh 1 route_kernel 2 > "$REAL_OUT/profile_route.txt" 2>&1
  echo "profile rc=$?"
  tail -60 "$REAL_OUT/profile_route.txt"
fi
