#!/bin/bash
# Nsight Compute per-instruction view of one launch (device machine; build/ from tests/gpu/device_run.sh):
# warp-stall samples and executed counts per SASS instruction, for bench/gpu/sass_summary.py.
#   bash bench/gpu/profile_sass.sh CASE_INDEX KERNEL_REGEX [SKIP]   e.g. 2 kbm_attend_ws
# OP=backward profiles a kernel of the backward call instead (breakdown.py --op backward: one warm-up
# call, then the profiled one; SKIP 1 takes the second launch), e.g. OP=backward ... 2 dkdv_ws 1
# Writes $OUT/sass.ncu-rep, $OUT/sass.csv (source page) and $OUT/sass_details.txt (stall totals).
set -u
OUT=${OUT:-/tmp/moba-out}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
cd /tmp/moba-src
$NCU --clock-control none -k "regex:${2:-kbm_attend_ws}" -s "${3:-3}" -c 1 --section SourceCounters \
  --section WarpStateStats --section SpeedOfLight -f -o "$OUT/sass" \
  $(if [ "${OP:-forward}" = backward ]; then
      echo python3 bench/gpu/breakdown.py --lib build/libmoba.so --op backward --kind "${KINDS:-random}" --case "${1:-2}"
    else
      echo python3 bench/gpu/bench_forward.py --lib build/libmoba.so --quick --kinds "${KINDS:-random}" --only "${1:-2}"
    fi) > "$OUT/sass_run.txt" 2>&1
echo "ncu rc=$?"
$NCU -i "$OUT/sass.ncu-rep" --page source --csv --print-source sass > "$OUT/sass.csv" 2>&1
$NCU -i "$OUT/sass.ncu-rep" --page details --print-details all > "$OUT/sass_details.txt" 2>&1
python3 bench/gpu/sass_summary.py "$OUT/sass.csv" | head -60
